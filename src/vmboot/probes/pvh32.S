/*
 * The PVH probe: entered through XEN_ELFNOTE_PHYS32_ENTRY in 32-bit protected mode with
 * paging off and EBX = the hvm_start_info (Xen public/arch-x86/hvm/start_info.h). The
 * PVH ABI gives no stack, so the probe uses its own. It reports the entry state, the
 * segments and the GDT, and everything start_info points at, then halts.
 * Linked at its load address (ELF p_paddr == p_vaddr), so absolute addresses are used.
 * Registers: ebx = start_info throughout.
 */
        .include "probe_defs.inc"

/* REPORT32 record, low word, high word: one record of two words. */
.macro  REPORT32 rec, lo, hi=$0
        movl    \lo, %esi
        movl    \hi, %ebp
        movl    \rec, %edi
        call    report32
.endm

        .section .note.Xen, "a"
        .balign 4
        .long   4                               /* namesz: "Xen\0" */
        .long   8                               /* descsz: a 64-bit address, as Linux */
        .long   XEN_ELFNOTE_PHYS32_ENTRY        /* type */
        .asciz  "Xen"
        .balign 4
        .quad   pvh_entry
        .balign 4

        .section .text.pvh, "ax"
        .code32
        .globl  pvh_entry
pvh_entry:
        movl    %esp, pvh_v_esp
        movl    %ebx, pvh_v_ebx
        movl    $pvh_stack_top, %esp
        pushfl
        popl    %eax
        movl    %eax, pvh_v_eflags
        movl    $0, pvh_v_count

        REPORT32 $REC_HELLO, $PROBE_MAGIC, $PROTOCOL_VERSION
        /* HELLO's second value: the entry kind (a second record word pair). */
        movl    $PORT_DATA, %edx
        movl    $ENTRY_PVH32, %eax
        outl    %eax, %dx
        xorl    %eax, %eax
        outl    %eax, %dx
        REPORT32 $REC_ENTRY_ADDR, $pvh_entry
        REPORT32 $REC_IMAGE_START, $_image_start
        REPORT32 $REC_IMAGE_END, $_image_end
        REPORT32 $REC_ENTRY_SP, pvh_v_esp
        REPORT32 $REC_ENTRY_FLAGS, pvh_v_eflags
        REPORT32 $REC_ENTRY_RBX, pvh_v_ebx

        movl    $MSR_EFER, %ecx
        rdmsr
        REPORT32 $REC_EFER, %eax, %edx
        movl    %cr0, %eax
        REPORT32 $REC_CR0, %eax
        movl    %cr3, %eax
        REPORT32 $REC_CR3, %eax
        movl    %cr4, %eax
        REPORT32 $REC_CR4, %eax

        movw    %cs, %ax
        movzwl  %ax, %eax
        movl    %eax, pvh_v_cs
        REPORT32 $REC_SEL_CS, %eax
        movw    %ds, %ax
        movzwl  %ax, %eax
        movl    %eax, pvh_v_ds
        REPORT32 $REC_SEL_DS, %eax
        movw    %es, %ax
        movzwl  %ax, %eax
        REPORT32 $REC_SEL_ES, %eax
        movw    %ss, %ax
        movzwl  %ax, %eax
        REPORT32 $REC_SEL_SS, %eax

        sgdtl   pvh_v_gdtr
        movzwl  pvh_v_gdtr, %eax
        REPORT32 $REC_GDT_LIMIT, %eax
        REPORT32 $REC_GDT_BASE, pvh_v_gdtr+2
        movl    pvh_v_cs, %ecx
        call    pvh_report_descriptor
        movl    pvh_v_ds, %ecx
        call    pvh_report_descriptor

        /* hvm_start_info */
        REPORT32 $REC_PVH_MAGIC, HVM_MAGIC(%ebx)
        REPORT32 $REC_PVH_VERSION, HVM_VERSION(%ebx)
        REPORT32 $REC_PVH_FLAGS, HVM_FLAGS(%ebx)
        REPORT32 $REC_PVH_NR_MODULES, HVM_NR_MODULES(%ebx)
        REPORT32 $REC_PVH_MODLIST, HVM_MODLIST_PADDR(%ebx), HVM_MODLIST_PADDR+4(%ebx)
        REPORT32 $REC_PVH_CMDLINE_PTR, HVM_CMDLINE_PADDR(%ebx), HVM_CMDLINE_PADDR+4(%ebx)
        REPORT32 $REC_PVH_RSDP, HVM_RSDP_PADDR(%ebx), HVM_RSDP_PADDR+4(%ebx)

        /* The command line (below 4 GiB, or it cannot be read with paging off). */
        cmpl    $0, HVM_CMDLINE_PADDR+4(%ebx)
        jne     1f
        movl    HVM_CMDLINE_PADDR(%ebx), %esi
        testl   %esi, %esi
        jz      1f
        call    pvh_strlen
        movl    %eax, pvh_v_len
        REPORT32 $REC_PVH_CMDLINE_LEN, %eax
        movl    HVM_CMDLINE_PADDR(%ebx), %esi
        movl    pvh_v_len, %ecx
        call    pvh_fnv
        REPORT32 $REC_PVH_CMDLINE_SUM, %eax, %edx
1:
        /* The modules (the initrd is module 0). */
        cmpl    $0, HVM_MODLIST_PADDR+4(%ebx)
        jne     3f
        movl    $0, pvh_v_index
2:      movl    pvh_v_index, %eax
        cmpl    HVM_NR_MODULES(%ebx), %eax
        jae     3f
        cmpl    $MAX_PVH_MODULES, %eax
        jae     3f
        shll    $HVM_MODLIST_ENTRY_SHIFT, %eax
        addl    HVM_MODLIST_PADDR(%ebx), %eax
        movl    %eax, pvh_v_entry
        movl    $REC_PVH_MODULE_ADDR, %edi
        orl     pvh_v_index, %edi
        movl    HVM_MOD_PADDR(%eax), %esi
        movl    HVM_MOD_PADDR+4(%eax), %ebp
        call    report32
        movl    pvh_v_entry, %eax
        movl    $REC_PVH_MODULE_SIZE, %edi
        orl     pvh_v_index, %edi
        movl    HVM_MOD_SIZE(%eax), %esi
        movl    HVM_MOD_SIZE+4(%eax), %ebp
        call    report32
        movl    pvh_v_entry, %eax
        movl    HVM_MOD_PADDR+4(%eax), %ecx
        orl     HVM_MOD_SIZE+4(%eax), %ecx
        jnz     4f
        movl    HVM_MOD_PADDR(%eax), %esi
        movl    HVM_MOD_SIZE(%eax), %ecx
        call    pvh_fnv
        movl    $REC_PVH_MODULE_SUM, %edi
        orl     pvh_v_index, %edi
        movl    %eax, %esi
        movl    %edx, %ebp
        call    report32
4:      incl    pvh_v_index
        jmp     2b
3:
        /* The memory map (start_info version 1 and later). */
        cmpl    $1, HVM_VERSION(%ebx)
        jb      5f
        REPORT32 $REC_PVH_MEMMAP_ADDR, HVM_MEMMAP_PADDR(%ebx), HVM_MEMMAP_PADDR+4(%ebx)
        REPORT32 $REC_PVH_MEMMAP_ENTRIES, HVM_MEMMAP_ENTRIES(%ebx)
        cmpl    $0, HVM_MEMMAP_PADDR+4(%ebx)
        jne     5f
        movl    HVM_MEMMAP_ENTRIES(%ebx), %ecx
        imull   $HVM_MEMMAP_ENTRY_SIZE, %ecx, %ecx
        movl    HVM_MEMMAP_PADDR(%ebx), %esi
        call    pvh_fnv
        REPORT32 $REC_PVH_MEMMAP_SUM, %eax, %edx
5:
        REPORT32 $REC_DONE, pvh_v_count
pvh_halt:
        cli
        hlt
        jmp     pvh_halt

/* report32: key edi, value ebp:esi (two words). Clobbers eax, edx. */
report32:
        movl    $PORT_KEY, %edx
        movl    %edi, %eax
        outl    %eax, %dx
        movl    $PORT_DATA, %edx
        movl    %esi, %eax
        outl    %eax, %dx
        movl    %ebp, %eax
        outl    %eax, %dx
        incl    pvh_v_count
        ret

/* pvh_report_descriptor: ecx = selector; the GDT's 8 bytes there, if within the limit.
 * Clobbers eax, edx, esi, edi, ebp. */
pvh_report_descriptor:
        andl    $SELECTOR_INDEX_MASK, %ecx
        leal    7(%ecx), %eax
        movzwl  pvh_v_gdtr, %edx
        cmpl    %edx, %eax
        ja      1f
        movl    pvh_v_gdtr+2, %eax
        addl    %ecx, %eax
        movl    (%eax), %esi
        movl    4(%eax), %ebp
        movl    $REC_GDT_DESC, %edi
        orl     %ecx, %edi
        call    report32
1:      ret

/* pvh_strlen: esi = string; eax = bytes before the NUL (at most MAX_STRING). */
pvh_strlen:
        xorl    %eax, %eax
1:      cmpl    $MAX_STRING, %eax
        jae     2f
        cmpb    $0, (%esi,%eax)
        je      2f
        incl    %eax
        jmp     1b
2:      ret

/* pvh_fnv: esi = data, ecx = length; edx:eax = the probes' FNV-1a 64 over 64-bit words
 * (vmboot/probes/checksum.py). Clobbers ecx, esi, edi, ebp. */
pvh_fnv:
        pushl   %ebx
        movl    $FNV_OFFSET_LO, %eax
        movl    $FNV_OFFSET_HI, %edx
        movl    %ecx, %ebp
        shrl    $3, %ebp
        jz      2f
1:      xorl    (%esi), %eax
        xorl    4(%esi), %edx
        call    pvh_mul_prime
        addl    $8, %esi
        decl    %ebp
        jnz     1b
2:      andl    $7, %ecx
        jz      4f
3:      movzbl  (%esi), %edi
        xorl    %edi, %eax
        call    pvh_mul_prime
        incl    %esi
        decl    %ecx
        jnz     3b
4:      popl    %ebx
        ret

/* pvh_mul_prime: edx:eax *= FNV_PRIME (2**40 + FNV_PRIME_LO) mod 2**64.
 * high = high * FNV_PRIME_LO + (low << 8) + carry part of low * FNV_PRIME_LO.
 * Clobbers ebx, edi. */
pvh_mul_prime:
        movl    %eax, %edi
        shll    $FNV_PRIME_SHIFT_IN_HIGH, %edi
        imull   $FNV_PRIME_LO, %edx, %edx
        addl    %edx, %edi
        movl    $FNV_PRIME_LO, %ebx
        mull    %ebx
        addl    %edi, %edx
        ret

        .data
        .balign 16
pvh_v_esp:      .long 0
pvh_v_ebx:      .long 0
pvh_v_eflags:   .long 0
pvh_v_count:    .long 0
pvh_v_cs:       .long 0
pvh_v_ds:       .long 0
pvh_v_len:      .long 0
pvh_v_index:    .long 0
pvh_v_entry:    .long 0
pvh_v_gdtr:     .fill 8, 1, 0
        .balign 16
pvh_stack:      .fill PVH_STACK_SIZE, 1, 0
pvh_stack_top:
