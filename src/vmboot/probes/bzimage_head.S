/*
 * The bzImage probe's boot-protocol parts: the real-mode sector with the setup header
 * (Documentation/arch/x86/boot.rst, protocol 2.15), and the start of the protected-mode
 * part with its 32-bit entry (unsupported: halts), kernel_info, and the 64-bit entry at
 * offset 0x200 that hands over to the probe body (probe64.S).
 *
 * Values come from probe_defs.inc (generated from vmboot.linux.bootparam and
 * vmboot.probes.protocol); sizes the link decides (_syssize, _init_size) come from
 * bzimage.ld. The protected-mode part is linked at address 0 and uses only RIP-relative
 * addressing, so kernel_info's symbol value is its offset from the protected-mode start.
 */
        .include "probe_defs.inc"

        .section .setup, "a"
        .code16
setup_start:
        /* No BIOS boot sector: a boot loader enters through the setup header. */
        cli
        hlt
        .org    SETUP_HEADER_OFFSET
        .byte   SETUP_SECTS                     /* setup_sects */
        .word   0                               /* root_flags */
        .long   _syssize                        /* syssize: protected-mode size / 16 */
        .word   0                               /* ram_size */
        .word   0                               /* vid_mode */
        .word   0                               /* root_dev */
        .word   BOOT_FLAG_MAGIC                 /* boot_flag */
        .byte   0xeb                            /* jump: a short JMP over the header */
        .byte   setup_header_end - header_magic
header_magic:
        .ascii  "HdrS"                          /* header */
        .word   PROBE_PROTOCOL                  /* version */
        .long   0                               /* realmode_swtch */
        .word   0                               /* start_sys_seg */
        .word   kernel_version_string - setup_start - SECTOR_SIZE /* kernel_version */
        .byte   0                               /* type_of_loader: the loader fills it */
        .byte   LOADED_HIGH                     /* loadflags */
        .word   0                               /* setup_move_size */
        .long   HIGH_LOAD_ADDRESS               /* code32_start */
        .long   0                               /* ramdisk_image */
        .long   0                               /* ramdisk_size */
        .long   0                               /* bootsect_kludge */
        .word   0                               /* heap_end_ptr */
        .byte   0                               /* ext_loader_ver */
        .byte   0                               /* ext_loader_type */
        .long   0                               /* cmd_line_ptr */
        .long   PROBE_INITRD_ADDR_MAX           /* initrd_addr_max */
        .long   PROBE_KERNEL_ALIGNMENT          /* kernel_alignment */
        .byte   1                               /* relocatable_kernel */
        .byte   PROBE_MIN_ALIGNMENT_LG2         /* min_alignment */
        .word   PROBE_XLOADFLAGS                /* xloadflags */
        .long   PROBE_CMDLINE_SIZE              /* cmdline_size */
        .long   0                               /* hardware_subarch */
        .quad   0                               /* hardware_subarch_data */
        .long   0                               /* payload_offset: nothing compressed */
        .long   0                               /* payload_length */
        .quad   0                               /* setup_data */
        .quad   PROBE_PREF_ADDRESS              /* pref_address */
        .long   _init_size                      /* init_size */
        .long   0                               /* handover_offset: no EFI */
        .long   kernel_info                     /* kernel_info_offset */
setup_header_end:
        /* Real-mode entry (setup + 0x200 jumps here): not supported by the probe. */
1:      cli
        hlt
        jmp     1b
kernel_version_string:
        PROBE_KERNEL_VERSION_STRING

        .section .pm.head, "awx"
        .code32
startup_32:
        /* The 32-bit entry (code32_start) is not probed: halt. */
        cli
        hlt
        jmp     startup_32

        .balign 16
kernel_info:
        .ascii  "LToP"                          /* header */
        .long   kernel_info_end - kernel_info   /* size */
        .long   kernel_info_end - kernel_info   /* size_total: no variable data */
        .long   SETUP_TYPE_MAX                  /* setup_type_max */
kernel_info_end:

        .org    ENTRY_64_OFFSET
        .code64
        .globl  startup_64
startup_64:
        leaq    startup_64(%rip), %r13
        movl    $ENTRY_BZIMAGE64, %r12d
        jmp     probe64_main
