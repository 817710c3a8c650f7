//! The eBPF object built from `xdp-ebpf/` by `build.rs`, embedded in the binary.

/// 8-byte aligned wrapper so the ELF parser can read the embedded bytes in place.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/sluice-xdp")));

/// The ELF bytes of the data-plane programs and maps.
pub fn bytes() -> &'static [u8] {
    &OBJECT.0
}
