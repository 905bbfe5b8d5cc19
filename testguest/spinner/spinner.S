/*
 * The spin guest: one ELF64 file that our VMM and QEMU both boot, and that keeps every
 * vCPU busy in guest mode. Built by testguest/build.rs; the memory map, boot paths and
 * markers are documented in testguest/src/spin_image.rs (keep both in sync).
 *
 * Two ways in, one 64-bit path:
 *   entry64    e_entry. Our VMM enters the BSP here in long mode on its own identity map
 *              of the first 4 GiB (GDT at 0x500, page tables at 0x9000..0xefff).
 *   pvh_entry  the PVH note's 32-bit entry. QEMU's -kernel enters the BSP here in flat
 *              32-bit protected mode, paging off, no usable GDT or stack: we load our GDT,
 *              build our own identity map of 4 GiB (2 MiB pages) and enter long mode.
 *   trampoline the APs: copied to TRAMPOLINE below 1 MiB by the BSP, entered in real mode
 *              by the SIPI, then protected mode -> long mode on the BSP's page tables.
 *
 * The BSP starts the APs as an OS does on real hardware: one broadcast INIT
 * (all-excluding-self), SIPI, SIPI; it sends them first thing, so a VMM that has not
 * created every boot vCPU before the BSP runs loses APs (vmm/tests/spin_guest.rs relies
 * on that). Then every CPU prints "SPIN cpu N up" (N = its APIC ID) under a spinlock and
 * spins forever incrementing its counter with interrupts off: no VM exit in the loop.
 * CPUs hot-added later stay in wait-for-SIPI: nothing starts them.
 *
 * Nothing here uses a stack (neither entry path provides one we could trust), so every
 * CPU runs the same code without per-CPU setup. Interrupts stay off throughout.
 */

#define COM1            0x3f8
#define COM1_LSR        (COM1 + 5)
#define LSR_THRE        0x20
/* Real-mode start page of the APs: free in our VMM (between its GDT at 0x500 and its zero
 * page at 0x7000) and in QEMU (plain RAM once the firmware has handed over). */
#define TRAMPOLINE      0x6000
#define SIPI_VECTOR     (TRAMPOLINE >> 12)
#define LAPIC_BASE      0xfee00000
#define LAPIC_ICR_LO    0x300
#define ICR_BUSY        (1 << 12)
/* Shorthand all-excluding-self (bits 19:18), level assert (bit 14), edge triggered. */
#define ICR_INIT_OTHERS 0x000c4500
#define ICR_SIPI_OTHERS (0x000c4600 | SIPI_VECTOR)
/* Gaps after INIT and between the SIPIs, in TSC ticks (1 to 5 GHz wherever this runs: no
 * calibration needed at this precision). The MP spec asks for 10 ms after INIT and 200 us
 * after a SIPI; modern CPUs need far less (Linux skips the 10 ms on them) and KVM nothing
 * (it applies INIT, then SIPI, when the target vCPU next runs). 2^20 ticks (0.2 to 1 ms)
 * and 2^19 (0.1 to 0.5 ms) keep the spec's order of events and cost 1.5 ms at most. */
#define INIT_GAP_TICKS  0x100000
#define SIPI_GAP_TICKS  0x80000
#define MAX_APIC_IDS    256
/* One cache line per counter, so that CPUs spinning on their own do not share a line. */
#define COUNTER_SHIFT   6
#define MSR_EFER        0xc0000080
#define EFER_LME        (1 << 8)
#define CR0_PE          1
#define CR0_PG          (1 << 31)
#define CR4_PAE         (1 << 5)
#define SEL_CODE32      0x08
#define SEL_DATA        0x10
#define SEL_CODE64      0x18
#define PTE_P_W         0x03
#define PDE_2M          0x83

/* Waits for the UART's transmit holding register, then writes %al. Clobbers %ah, %edx. */
.macro PUTC
        mov     %al, %ah
        mov     $COM1_LSR, %edx
.Lthre\@:
        in      %dx, %al
        test    $LSR_THRE, %al
        jz      .Lthre\@
        mov     %ah, %al
        mov     $COM1, %edx
        out     %al, %dx
.endm

/* Writes the NUL-terminated string at \str. Clobbers %rax, %rdx, %rsi. */
.macro PUTS str
        lea     \str(%rip), %rsi
.Lputs\@:
        lodsb
        test    %al, %al
        jz      .Lputs_done\@
        PUTC
        jmp     .Lputs\@
.Lputs_done\@:
.endm

/* Reads the TSC into %rax. Clobbers %rdx. */
.macro RDTSC64
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
.endm

/* Waits \ticks TSC ticks. Clobbers %rax, %rdx, %r8. */
.macro DELAY ticks
        RDTSC64
        mov     %rax, %r8
.Ldelay\@:
        pause
        RDTSC64
        sub     %r8, %rax
        cmp     $\ticks, %rax
        jb      .Ldelay\@
.endm

/* Sends the IPI \icr (a shorthand: no destination in ICR_HI) and waits until the local
 * APIC has accepted it; %rdi = LAPIC base. */
.macro SEND_IPI icr
        movl    $\icr, LAPIC_ICR_LO(%rdi)
.Lbusy\@:
        testl   $ICR_BUSY, LAPIC_ICR_LO(%rdi)
        jnz     .Lbusy\@
.endm

        .text

/* ---- our VMM: the BSP arrives in 64-bit mode ---------------------------------------- */
        .code64
        .globl  entry64
entry64:
        cli
        cld
        /* The APs reuse whatever identity map the BSP runs on: here the VMM's, below 4 GiB. */
        mov     %cr3, %rax
        mov     %eax, ap_cr3(%rip)
        mov     $1, %r15d                       /* r15 = 1: this is the BSP */
        jmp     cpu_up

/* ---- QEMU (PVH): the BSP arrives in 32-bit protected mode, paging off --------------- */
        .code32
        .globl  pvh_entry
pvh_entry:
        cli
        cld
        lgdt    gdt_desc
        ljmp    $SEL_CODE32, $1f
1:      mov     $SEL_DATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        /* Identity map of 4 GiB: PML4[0] -> PDPT, PDPT[0..3] -> 4 PDs of 2 MiB pages
         * (the LAPIC at 0xfee00000 needs the last GiB). Six pages, cleared first: the
         * image's bss is zero in both loaders, but the code should not depend on it. */
        mov     $page_tables, %edi
        xor     %eax, %eax
        mov     $(6 * 4096 / 4), %ecx
        rep stosl
        movl    $(pdpt + PTE_P_W), pml4
        mov     $pdpt, %edi
        mov     $(pds + PTE_P_W), %eax
        mov     $4, %ecx
2:      mov     %eax, (%edi)
        add     $4096, %eax
        add     $8, %edi
        dec     %ecx
        jnz     2b
        mov     $pds, %edi
        mov     $PDE_2M, %eax
        mov     $(4 * 512), %ecx
3:      mov     %eax, (%edi)
        add     $0x200000, %eax
        add     $8, %edi
        dec     %ecx
        jnz     3b
        mov     $pml4, %eax
        mov     %eax, ap_cr3
        mov     $1, %esi                        /* BSP */
        jmp     enter_long

/* ---- APs, after the trampoline: 32-bit protected mode on our GDT -------------------- */
ap_pm32:
        mov     $SEL_DATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        xor     %esi, %esi                      /* AP */

/* Shared: %esi = 1 on the BSP. Loads ap_cr3 (the BSP's map), turns on PAE, LME, paging. */
enter_long:
        mov     ap_cr3, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $CR4_PAE, %eax
        mov     %eax, %cr4
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     %cr0, %eax
        or      $(CR0_PG | CR0_PE), %eax
        mov     %eax, %cr0
        ljmp    $SEL_CODE64, $long64

        .code64
long64:
        mov     %esi, %r15d                     /* 32-bit move: clears the upper half */

/* ---- every CPU: (BSP) start the APs, announce, spin --------------------------------- */
cpu_up:
        test    %r15d, %r15d
        jz      announce
        /* BSP: start the APs first thing, before anything slow (the serial line costs VM
         * exits to the VMM): the sooner the INIT, the surer a VMM that creates APs after
         * the BSP runs is caught. Holding the serial lock meanwhile (no AP runs yet) keeps
         * our fresh line (firmware such as SeaBIOS leaves one open) and marker first. */
        movl    $1, serial_lock(%rip)
        lea     trampoline(%rip), %rsi
        mov     $TRAMPOLINE, %edi
        mov     $(trampoline_end - trampoline), %ecx
        rep movsb
        mov     $LAPIC_BASE, %edi
        SEND_IPI ICR_INIT_OTHERS
        DELAY   INIT_GAP_TICKS
        SEND_IPI ICR_SIPI_OTHERS
        DELAY   SIPI_GAP_TICKS
        SEND_IPI ICR_SIPI_OTHERS                /* the spec's second SIPI, should the */
                                                /* first be lost; started APs ignore it */
        mov     $0x0a, %al                      /* '\n' */
        PUTC
        jmp     2f

announce:
        /* One line at a time on the shared UART. */
1:      mov     $1, %eax
        xchg    %eax, serial_lock(%rip)
        test    %eax, %eax
        jz      2f
        pause
        jmp     1b
2:      mov     $1, %eax
        cpuid
        shr     $24, %ebx                       /* ebx = initial APIC ID */
        PUTS    msg_cpu
        /* APIC ID in decimal: digits collected least significant first in r8's low bytes. */
        mov     %ebx, %eax
        xor     %r8d, %r8d
        xor     %ecx, %ecx
        mov     $10, %r9d
3:      xor     %edx, %edx
        div     %r9d
        shl     $8, %r8
        add     $0x30, %dl                      /* '0' */
        mov     %dl, %r8b
        inc     %ecx
        test    %eax, %eax
        jnz     3b
4:      mov     %r8b, %al
        PUTC
        shr     $8, %r8
        dec     %ecx
        jnz     4b
        PUTS    msg_up
        movl    $0, serial_lock(%rip)

/* ---- every CPU, forever: the loop the benchmarks pause and resume ------------------- */
        shl     $COUNTER_SHIFT, %ebx
        lea     counters(%rbx), %rdi            /* rdi = &counters[APIC ID] */
5:      incq    (%rdi)
        jmp     5b

/* ---- AP trampoline: copied to TRAMPOLINE, entered in real mode at CS:IP = 0x0600:0 --- */
        .code16
        .balign 16
trampoline:
        cli
        cld
        mov     %cs, %ax
        mov     %ax, %ds
        lgdtl   tramp_gdt_desc - trampoline     /* ds-relative: the copy's own descriptor */
        mov     %cr0, %eax
        or      $CR0_PE, %eax
        mov     %eax, %cr0
        ljmpl   $SEL_CODE32, $ap_pm32           /* absolute: back into the image */
        .balign 4
tramp_gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt
trampoline_end:

        .section .rodata
        .balign 8
gdt:
        .quad   0
        .quad   0x00cf9b000000ffff              /* 0x08: 32-bit code, flat 4 GiB */
        .quad   0x00cf93000000ffff              /* 0x10: data, flat 4 GiB */
        .quad   0x00af9b000000ffff              /* 0x18: 64-bit code */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt
msg_cpu:
        .asciz  "SPIN cpu "
msg_up:
        .asciz  " up\n"

/* PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18, name "Xen"). The descriptor is 8 bytes:
 * QEMU reads a 64-bit value from an ELF64 file, linux-loader the low 32 bits. Aligned 4,
 * not 8: QEMU aligns the name by the PT_NOTE segment's p_align. */
        .section .note.Xen, "a", @note
        .balign 4
        .long   4
        .long   8
        .long   18
        .asciz  "Xen"
        .balign 4
        .long   pvh_entry
        .long   0

        .bss
        .balign 4
serial_lock:
        .skip   4
ap_cr3: .skip   4                               /* the BSP's CR3, for the APs */

/* The PVH path's identity map; spinner.ld puts it on a page boundary. (A .balign 4096
 * here would raise the segment's alignment and pad the file with a page of zeros.) */
        .section .pagetables, "aw", @nobits
page_tables:
pml4:   .skip   4096
pdpt:   .skip   4096
pds:    .skip   4 * 4096

/* counters[APIC ID]: a u64 at the start of each 64-byte line; placed at a fixed
 * address by spinner.ld. */
        .section .counters, "aw", @nobits
        .globl  counters
        .balign 1 << COUNTER_SHIFT
counters:
        .skip   MAX_APIC_IDS << COUNTER_SHIFT

        .section .note.GNU-stack, "", @progbits
