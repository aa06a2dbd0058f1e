/*
 * The ELF vmlinux probes' 64-bit entry (e_entry): entered in long mode with RSI = the
 * zero page, exactly as the bzImage 64-bit entry; hands over to the probe body.
 */
        .include "probe_defs.inc"

        .section .text.entry, "ax"
        .code64
        .globl  elf64_entry
elf64_entry:
        leaq    elf64_entry(%rip), %r13
        movl    $ENTRY_ELF64, %r12d
        jmp     probe64_main
