//! From QEMU's PVH entry to Rust: QEMU's `-kernel` loads this ELF and, finding the PVH note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`), jumps to `pvh_start32` in 32-bit protected mode with paging
//! off. The entry identity-maps the first 1 GiB with 2 MiB pages, turns on PAE and long
//! mode, loads a GDT with a 64-bit code segment, and calls [`crate::kernel_main`] on its own
//! stack. No boot crate, no firmware tables read: the kernel needs only the serial port.

/// The boot stack.
const STACK: usize = 64 * 1024;

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start32

    .section .text.boot32, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esp, offset {stack} + {stack_size}

    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] = i * 2 MiB (present, writable, huge). */
    mov eax, offset {pdpt}
    or eax, 3
    mov dword ptr [{pml4}], eax
    mov eax, offset {pd}
    or eax, 3
    mov dword ptr [{pdpt}], eax
    xor ecx, ecx
2:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [{pd} + ecx * 8], eax
    mov dword ptr [{pd} + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 512
    jne 2b

    mov eax, offset {pml4}
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax

    lgdt [{gdt_ptr}]
    push 0x08
    mov eax, offset pvh_long_mode
    push eax
    retf

    .code64
pvh_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset {stack} + {stack_size}
    call {main}
4:
    hlt
    jmp 4b
    "#,
    stack = sym BOOT_STACK,
    stack_size = const STACK,
    pml4 = sym PML4,
    pdpt = sym PDPT,
    pd = sym PD,
    gdt_ptr = sym GDT_PTR,
    main = sym crate::kernel_main,
);

/// A page table: 512 entries, 4 KiB aligned.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// Written by the boot code above only, before any Rust code runs.
static mut PML4: Table = Table([0; 512]);
static mut PDPT: Table = Table([0; 512]);
static mut PD: Table = Table([0; 512]);

#[repr(C, align(16))]
struct Stack([u8; STACK]);

/// The kernel's stack (the boot code points `esp`/`rsp` at its top).
static mut BOOT_STACK: Stack = Stack([0; STACK]);

/// Null, 64-bit code (0x08), data (0x10).
#[repr(C, align(8))]
struct Gdt([u64; 3]);

static GDT: Gdt = Gdt([0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]);

/// The operand of `lgdt`: limit, then the 32-bit base (the boot code loads it in 32-bit
/// mode; the GDT lies below 4 GiB).
#[repr(C, packed)]
struct GdtPtr {
    limit: u16,
    base: &'static Gdt,
}

// SAFETY: read by the CPU only (`lgdt`); a shared reference to a static.
unsafe impl Sync for GdtPtr {}

static GDT_PTR: GdtPtr = GdtPtr {
    limit: (core::mem::size_of::<Gdt>() - 1) as u16,
    base: &GDT,
};
