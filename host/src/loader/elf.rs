//! A bounds-checked look at a plugin library's ELF headers before it is mapped.
//!
//! `dlopen` maps a library's segments straight from the file; a page past the end of a file
//! cut short (a copy still in progress, a full disk) is not an error there but a SIGBUS
//! when the loader touches it, and that kills the whole process. So the loader first reads
//! the ELF header and program headers itself and refuses a file that is not a shared object
//! for this machine, or that is shorter than its headers say, with a reason.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
/// `e_phnum` value meaning "the real count is in section 0's `sh_info`".
const PN_XNUM: u16 = 0xffff;
/// At most this many program headers are read (real libraries have about ten).
const MAX_PROGRAM_HEADERS: usize = 4096;

/// What the headers of a good library say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes the file must have: the end of its furthest program header, segment or
    /// section header table.
    pub needed: u64,
    /// Its loadable segments.
    pub loads: usize,
}

/// The machine this host runs on, as ELF spells it: class, data encoding, `e_machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// 1: 32-bit, 2: 64-bit.
    pub class: u8,
    /// 1: little-endian, 2: big-endian.
    pub data: u8,
    /// `e_machine`, when known for this build (`None`: not checked).
    pub machine: Option<u16>,
}

impl Target {
    /// The machine this binary was built for.
    pub const HOST: Target = Target {
        class: if cfg!(target_pointer_width = "64") { 2 } else { 1 },
        data: if cfg!(target_endian = "little") { 1 } else { 2 },
        machine: if cfg!(target_arch = "x86_64") {
            Some(62)
        } else if cfg!(target_arch = "aarch64") {
            Some(183)
        } else if cfg!(target_arch = "x86") {
            Some(3)
        } else if cfg!(target_arch = "arm") {
            Some(40)
        } else if cfg!(target_arch = "riscv64") {
            Some(243)
        } else if cfg!(target_arch = "powerpc64") {
            Some(21)
        } else if cfg!(target_arch = "s390x") {
            Some(22)
        } else {
            None
        },
    };
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "x86".into(),
        40 => "ARM".into(),
        62 => "x86-64".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        21 => "PowerPC64".into(),
        22 => "s390x".into(),
        other => format!("machine {other}"),
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Reads integers of one ELF class and byte order from a header.
struct Fields<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Fields<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if self.little { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) })
    }
    /// An address-sized field: 4 bytes in 32-bit files, 8 in 64-bit ones.
    fn word(&self, at: usize, wide: bool) -> Option<u64> {
        if wide {
            self.u64(at)
        } else {
            self.u32(at).map(u64::from)
        }
    }
}

const TRUNCATED_HINT: &str = "it may still be being copied — wait for the copy to finish, then reload; otherwise copy the library again";

/// Why a file cannot be mapped as a plugin library. Each says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfProblem {
    /// Shorter than its headers say (it may still be being copied): `size` bytes, where
    /// `part` ("its program headers need") needs `needed`.
    Truncated {
        /// The file's size.
        size: u64,
        /// Which part needs the bytes.
        part: &'static str,
        /// Bytes it needs.
        needed: u64,
    },
    /// It does not start with the ELF magic.
    NotElf {
        /// The file's size.
        size: u64,
    },
    /// A header is damaged (what is wrong with it).
    Damaged(String),
    /// Built for another machine: what it was built for, and what this weir is.
    OtherMachine {
        /// What the file was built for.
        built: String,
        /// What this weir is (`is 64-bit little-endian`, `runs on x86-64`).
        host: String,
    },
    /// An ELF file that is not a shared object, and what it is instead.
    NotSharedObject(&'static str),
    /// It has no program headers.
    NoProgramHeaders,
    /// It has no loadable segments.
    NoLoadableSegments,
    /// It cannot be opened or read (what the system said).
    Unreadable(String),
}

impl ElfProblem {
    /// Whether waiting may cure it (a file still being copied).
    pub fn truncated(&self) -> bool {
        matches!(self, ElfProblem::Truncated { .. })
    }
}

impl std::fmt::Display for ElfProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElfProblem::Truncated { size, part, needed } => {
                write!(f, "truncated: {} bytes, {part} {}; {TRUNCATED_HINT}", thousands(*size), thousands(*needed))
            }
            ElfProblem::NotElf { size } => write!(
                f,
                "not an ELF shared object ({} bytes that do not start with the ELF magic); remove it from the plugin directory, or rebuild the plugin",
                thousands(*size)
            ),
            ElfProblem::Damaged(what) => write!(f, "a damaged ELF file ({what}); copy the library again"),
            ElfProblem::OtherMachine { built, host } => {
                write!(f, "built for another machine ({built}; this weir {host}); build the plugin for this machine")
            }
            ElfProblem::NotSharedObject(what) => write!(
                f,
                "{what}, not a shared library; a plugin is built as a `cdylib` (crate-type = [\"cdylib\"]): rebuild it, or remove this file from the plugin directory"
            ),
            ElfProblem::NoProgramHeaders => f.write_str("an ELF file without program headers: not a loadable library; rebuild the plugin"),
            ElfProblem::NoLoadableSegments => f.write_str("an ELF file without loadable segments: not a usable library; rebuild the plugin"),
            ElfProblem::Unreadable(why) => f.write_str(why),
        }
    }
}

/// `part` says which part needs the bytes: "its program headers need".
fn truncated(size: u64, part: &'static str, needed: u64) -> ElfProblem {
    ElfProblem::Truncated { size, part, needed }
}

/// Checks the headers of an ELF file of `size` bytes, reading parts of it with `read_at`
/// (which fills the buffer from that offset, or returns false when it cannot). Returns what
/// the file needs, or why it cannot be mapped: what is wrong and what to do.
pub fn inspect(size: u64, target: Target, read_at: &mut dyn FnMut(u64, &mut [u8]) -> bool) -> Result<Layout, ElfProblem> {
    let mut ident = [0u8; 16];
    let short = size < 16 || !read_at(0, &mut ident);
    if short || ident[..4] != MAGIC {
        if short && size >= 4 && read_at(0, &mut ident[..4]) && ident[..4] == MAGIC {
            return Err(truncated(size, "its ELF header needs", 16));
        }
        return Err(ElfProblem::NotElf { size });
    }
    let (class, data) = (ident[4], ident[5]);
    if class != 1 && class != 2 || data != 1 && data != 2 {
        return Err(ElfProblem::Damaged(format!("class {class}, data encoding {data}")));
    }
    let bits = |c: u8| if c == 2 { "64-bit" } else { "32-bit" };
    let order = |d: u8| if d == 1 { "little-endian" } else { "big-endian" };
    if class != target.class || data != target.data {
        return Err(ElfProblem::OtherMachine {
            built: format!("{} {}", bits(class), order(data)),
            host: format!("is {} {}", bits(target.class), order(target.data)),
        });
    }
    let wide = class == 2;
    let header_len: u64 = if wide { 64 } else { 52 };
    if size < header_len {
        return Err(truncated(size, "its ELF header needs", header_len));
    }
    let mut header = vec![0u8; header_len as usize];
    if !read_at(0, &mut header) {
        return Err(truncated(size, "its ELF header needs", header_len));
    }
    let h = Fields { bytes: &header, little: data == 1 };
    let bad = |what: &str| ElfProblem::Damaged(what.to_owned());
    let e_type = h.u16(16).ok_or_else(|| bad("no type"))?;
    let e_machine = h.u16(18).ok_or_else(|| bad("no machine"))?;
    if let Some(m) = target.machine.filter(|&m| m != e_machine) {
        return Err(ElfProblem::OtherMachine { built: machine_name(e_machine), host: format!("runs on {}", machine_name(m)) });
    }
    if e_type != ET_DYN {
        let what = match e_type {
            1 => "a relocatable object (.o)",
            2 => "an executable",
            4 => "a core dump",
            _ => "not a shared object",
        };
        return Err(ElfProblem::NotSharedObject(what));
    }
    let (phoff, shoff) = if wide { (h.u64(32), h.u64(40)) } else { (h.u32(28).map(u64::from), h.u32(32).map(u64::from)) };
    let (phoff, shoff) = (phoff.ok_or_else(|| bad("no e_phoff"))?, shoff.ok_or_else(|| bad("no e_shoff"))?);
    let at = if wide { 54 } else { 42 };
    let (phentsize, phnum, shentsize, shnum) = (h.u16(at), h.u16(at + 2), h.u16(at + 4), h.u16(at + 6));
    let (phentsize, mut phnum, shentsize, mut shnum) = match (phentsize, phnum, shentsize, shnum) {
        (Some(a), Some(b), Some(c), Some(d)) => (u64::from(a), u64::from(b), u64::from(c), u64::from(d)),
        _ => return Err(bad("short header")),
    };
    let (min_ph, min_sh) = if wide { (56, 64) } else { (32, 40) };
    if phnum == 0 || phoff == 0 {
        return Err(ElfProblem::NoProgramHeaders);
    }
    // Real entries are exactly `min_ph` bytes; a few times that is allowed, no more.
    if !(min_ph..=4 * min_ph).contains(&phentsize) {
        return Err(bad(&format!("program header entries of {phentsize} bytes")));
    }
    let mut needed = header_len;
    // Section 0 holds the real counts when they do not fit the header's 16-bit fields.
    if shoff != 0 && (shnum == 0 || phnum == u64::from(PN_XNUM)) {
        if shentsize < min_sh {
            return Err(bad(&format!("section header entries of {shentsize} bytes")));
        }
        let end = shoff.checked_add(shentsize).ok_or_else(|| bad("section headers past 2^64"))?;
        if end > size {
            return Err(truncated(size, "its section headers need", end));
        }
        let mut s0 = vec![0u8; shentsize.min(64) as usize];
        if !read_at(shoff, &mut s0) {
            return Err(truncated(size, "its section headers need", end));
        }
        let s = Fields { bytes: &s0, little: data == 1 };
        if shnum == 0 {
            shnum = s.word(if wide { 32 } else { 20 }, wide).ok_or_else(|| bad("short section 0"))?;
        }
        if phnum == u64::from(PN_XNUM) {
            phnum = u64::from(s.u32(if wide { 44 } else { 28 }).ok_or_else(|| bad("short section 0"))?);
        }
        needed = needed.max(end);
    }
    if phnum as usize > MAX_PROGRAM_HEADERS {
        return Err(bad(&format!("{phnum} program headers")));
    }
    let ph_end = phentsize.checked_mul(phnum).and_then(|n| n.checked_add(phoff)).ok_or_else(|| bad("program headers past 2^64"))?;
    if ph_end > size {
        return Err(truncated(size, "its program headers need", ph_end));
    }
    needed = needed.max(ph_end);
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    if !read_at(phoff, &mut table) {
        return Err(truncated(size, "its program headers need", ph_end));
    }
    let mut loads = 0;
    let mut furthest = 0u64;
    for entry in table.chunks_exact(phentsize as usize) {
        let p = Fields { bytes: entry, little: data == 1 };
        let p_type = p.u32(0).ok_or_else(|| bad("short program header"))?;
        let (offset, filesz) = if wide { (p.u64(8), p.u64(32)) } else { (p.u32(4).map(u64::from), p.u32(16).map(u64::from)) };
        let (offset, filesz) = (offset.ok_or_else(|| bad("short program header"))?, filesz.ok_or_else(|| bad("short program header"))?);
        if filesz == 0 {
            continue;
        }
        let end = offset.checked_add(filesz).ok_or_else(|| bad("a segment past 2^64"))?;
        furthest = furthest.max(end);
        loads += usize::from(p_type == PT_LOAD);
    }
    if loads == 0 {
        return Err(ElfProblem::NoLoadableSegments);
    }
    if furthest > size {
        return Err(truncated(size, "its program headers need", furthest));
    }
    needed = needed.max(furthest);
    if shoff != 0 && shnum != 0 {
        if shentsize < min_sh {
            return Err(bad(&format!("section header entries of {shentsize} bytes")));
        }
        let sh_end = shentsize.checked_mul(shnum).and_then(|n| n.checked_add(shoff)).ok_or_else(|| bad("section headers past 2^64"))?;
        if sh_end > size {
            return Err(truncated(size, "its section headers need", sh_end));
        }
        needed = needed.max(sh_end);
    }
    Ok(Layout { needed, loads })
}

/// [`inspect`] over bytes in memory (the whole file).
pub fn inspect_bytes(bytes: &[u8], target: Target) -> Result<Layout, ElfProblem> {
    inspect(bytes.len() as u64, target, &mut |offset, buf| {
        let Ok(start) = usize::try_from(offset) else { return false };
        match start.checked_add(buf.len()).and_then(|end| bytes.get(start..end)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    })
}

/// [`inspect`] over a file, reading only its headers.
pub fn inspect_file(path: &Path) -> Result<Layout, ElfProblem> {
    let mut file = std::fs::File::open(path).map_err(|e| ElfProblem::Unreadable(format!("cannot be opened: {e}")))?;
    let size = file.metadata().map_err(|e| ElfProblem::Unreadable(format!("cannot be read: {e}")))?.len();
    inspect(size, Target::HOST, &mut |offset, buf| file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(buf).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real shared library to cut: the test binary links against libc, whose file is a
    /// shared object on every Linux machine; fall back to any plugin library built.
    fn real_library() -> Vec<u8> {
        let exe = std::env::current_exe().unwrap();
        let target_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let mut candidates: Vec<std::path::PathBuf> = std::fs::read_dir(&target_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "so")).collect())
            .unwrap_or_default();
        candidates.sort();
        candidates.extend(
            ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6", "/lib64/libc.so.6"]
                .map(std::path::PathBuf::from),
        );
        let path = candidates.into_iter().find(|p| p.is_file()).expect("a shared library on this machine");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_real_library_passes_and_needs_at_most_its_size() {
        let lib = real_library();
        let layout = inspect_bytes(&lib, Target::HOST).unwrap();
        assert!(layout.loads >= 1);
        assert!(layout.needed <= lib.len() as u64 && layout.needed > lib.len() as u64 / 2, "{layout:?} of {}", lib.len());
    }

    #[test]
    fn every_prefix_of_a_real_library_is_refused_without_a_panic() {
        let lib = real_library();
        let needed = inspect_bytes(&lib, Target::HOST).unwrap().needed as usize;
        // Every length up to 64 KiB, then every 4099th (a prime step, so page and header
        // boundaries are hit at many offsets), and the last 4 KiB before the end.
        let lengths = (0..65_536.min(lib.len())).chain((65_536..lib.len()).step_by(4099)).chain(lib.len().saturating_sub(4096)..lib.len());
        for len in lengths {
            match inspect_bytes(&lib[..len], Target::HOST) {
                Ok(layout) => assert!(len >= needed && layout.needed as usize <= len, "a {len}-byte prefix passed: {layout:?}"),
                Err(reason) => assert!(
                    len < needed && (reason.truncated() || len < 4 || matches!(reason, ElfProblem::NotElf { .. })),
                    "{len} bytes: {reason}"
                ),
            }
        }
    }

    #[test]
    fn a_truncated_library_says_how_big_it_is_what_it_needs_and_what_to_do() {
        let lib = real_library();
        let reason = inspect_bytes(&lib[..65_536], Target::HOST).unwrap_err().to_string();
        assert!(reason.starts_with("truncated: 65,536 bytes, its "), "{reason}");
        assert!(reason.contains("wait for the copy to finish, then reload"), "{reason}");
        let reason = inspect_bytes(&lib[..10], Target::HOST).unwrap_err().to_string();
        assert!(reason.starts_with("truncated: 10 bytes, its ELF header needs 16"), "{reason}");
    }

    #[test]
    fn foreign_and_non_library_files_are_refused_with_the_reason() {
        let lib = real_library();
        let other = Target { machine: Some(if Target::HOST.machine == Some(183) { 62 } else { 183 }), ..Target::HOST };
        assert!(inspect_bytes(&lib, other).unwrap_err().to_string().starts_with("built for another machine"), "machine");
        let narrow = Target { class: 3 - Target::HOST.class, ..Target::HOST };
        assert!(inspect_bytes(&lib, narrow).unwrap_err().to_string().contains("this weir is"), "class");
        let mut exe = lib.clone();
        let little = Target::HOST.data == 1;
        exe[16..18].copy_from_slice(&if little { 2u16.to_le_bytes() } else { 2u16.to_be_bytes() });
        assert!(inspect_bytes(&exe, Target::HOST).unwrap_err().to_string().starts_with("an executable, not a shared library"));
        assert!(inspect_bytes(b"#!/bin/sh\necho not a library\n", Target::HOST)
            .unwrap_err()
            .to_string()
            .starts_with("not an ELF shared object"));
        assert!(inspect_bytes(b"", Target::HOST).unwrap_err().to_string().starts_with("not an ELF shared object (0 bytes"));
    }

    #[test]
    fn absurd_header_values_are_refused_not_trusted() {
        let lib = real_library();
        let little = Target::HOST.data == 1;
        let wide = Target::HOST.class == 2;
        let mut huge = lib.clone();
        // e_phoff far past the end of the file.
        let at = if wide { 32 } else { 28 };
        if wide {
            huge[at..at + 8].copy_from_slice(&if little { u64::MAX.to_le_bytes() } else { u64::MAX.to_be_bytes() });
        } else {
            huge[at..at + 4].copy_from_slice(&if little { u32::MAX.to_le_bytes() } else { u32::MAX.to_be_bytes() });
        }
        let reason = inspect_bytes(&huge, Target::HOST).unwrap_err().to_string();
        assert!(reason.contains("program headers"), "{reason}");
    }

    /// A minimal shared object with one loadable segment of `len` bytes from offset 0, built by
    /// hand in either class and byte order.
    fn hand_made(wide: bool, big: bool, machine: u16, len: u64) -> Vec<u8> {
        let mut d = vec![0x7f, b'E', b'L', b'F', if wide { 2 } else { 1 }, if big { 2 } else { 1 }, 1];
        d.resize(16, 0);
        let put = |d: &mut Vec<u8>, v: u64, n: usize| {
            let b = v.to_le_bytes();
            let mut b = b[..n].to_vec();
            if big {
                b.reverse();
            }
            d.extend(b);
        };
        let w = if wide { 8 } else { 4 };
        let header = if wide { 64 } else { 52 };
        for (v, n) in [(3, 2), (u64::from(machine), 2), (1, 4), (0, w), (header, w), (0, w), (0, 4), (header, 2)] {
            put(&mut d, v, n);
        }
        for v in [if wide { 56 } else { 32 }, 1, if wide { 64 } else { 40 }, 0, 0] {
            put(&mut d, v, 2);
        }
        if wide {
            for (v, n) in [(1, 4), (5, 4), (0, 8), (0, 8), (0, 8), (len, 8), (len, 8), (4096, 8)] {
                put(&mut d, v, n);
            }
        } else {
            for v in [1, 0, 0, 0, len, len, 5, 4096] {
                put(&mut d, v, 4);
            }
        }
        d.resize(len as usize, 0);
        d
    }

    #[test]
    fn both_classes_and_byte_orders_are_read() {
        for (wide, big) in [(false, false), (false, true), (true, false), (true, true)] {
            let target = Target { class: if wide { 2 } else { 1 }, data: if big { 2 } else { 1 }, machine: Some(22) };
            let lib = hand_made(wide, big, 22, 512);
            assert_eq!(inspect_bytes(&lib, target), Ok(Layout { needed: 512, loads: 1 }), "wide {wide} big {big}");
            let reason = inspect_bytes(&lib[..300], target).unwrap_err().to_string();
            assert!(reason.starts_with("truncated: 300 bytes, its program headers need 512"), "{reason}");
            let reason = inspect_bytes(&hand_made(wide, big, 62, 512), target).unwrap_err().to_string();
            assert!(reason.contains("x86-64; this weir runs on s390x"), "{reason}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(65_536), "65,536");
        assert_eq!(thousands(2_345_678), "2,345,678");
    }
}
