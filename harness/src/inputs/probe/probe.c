/* bootwatch's firmware probe: an AArch64 UEFI application that measures what the firmware it
 * runs under provides, prints one `BOOTWATCH-PROBE key=value` line per measurement on ConOut
 * (patterns.toml's `probe-fact` role parses them; core::firmware::probe turns them into facts),
 * and powers the machine off. Raw values only: the interpretation is Rust's.
 *
 * Built at run time by clang + lld-link (inputs::probe), never committed as a binary.
 * Freestanding: the few UEFI table layouts it needs are declared here (UEFI 2.10, 64-bit). */

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef u64 UINTN;
typedef u64 EFI_STATUS;
typedef u16 CHAR16;
typedef struct { u32 a; u16 b, c; u8 d[8]; } EFI_GUID;

typedef struct { u64 Signature; u32 Revision, HeaderSize, CRC32, Reserved; } EFI_TABLE_HEADER;
typedef struct { void *Reset; EFI_STATUS (*OutputString)(void *This, CHAR16 *s); } TEXT_OUT;
typedef struct { EFI_GUID Guid; void *Table; } CONFIG_TABLE;
typedef struct {
    u32 Type, Pad; u64 PhysicalStart, VirtualStart, NumberOfPages, Attribute;
} MEMORY_DESCRIPTOR;

typedef struct {
    EFI_TABLE_HEADER Hdr;
    void *RaiseTPL, *RestoreTPL;
    EFI_STATUS (*AllocatePages)(u32 Type, u32 MemoryType, UINTN Pages, u64 *Memory);
    EFI_STATUS (*FreePages)(u64 Memory, UINTN Pages);
    EFI_STATUS (*GetMemoryMap)(UINTN *Size, MEMORY_DESCRIPTOR *Map, UINTN *Key, UINTN *DescSize,
                               u32 *Version);
    EFI_STATUS (*AllocatePool)(u32 PoolType, UINTN Size, void **Buffer);
    EFI_STATUS (*FreePool)(void *Buffer);
    void *CreateEvent, *SetTimer, *WaitForEvent, *SignalEvent, *CloseEvent, *CheckEvent;
    void *InstallProtocolInterface, *ReinstallProtocolInterface, *UninstallProtocolInterface;
    void *HandleProtocol, *Reserved, *RegisterProtocolNotify, *LocateHandle, *LocateDevicePath;
    void *InstallConfigurationTable;
    void *LoadImage, *StartImage, *Exit, *UnloadImage, *ExitBootServices;
    void *GetNextMonotonicCount, *Stall, *SetWatchdogTimer;
    void *ConnectController, *DisconnectController;
    void *OpenProtocol, *CloseProtocol, *OpenProtocolInformation;
    void *ProtocolsPerHandle, *LocateHandleBuffer;
    EFI_STATUS (*LocateProtocol)(EFI_GUID *Protocol, void *Registration, void **Interface);
} BOOT_SERVICES;

typedef struct {
    EFI_TABLE_HEADER Hdr;
    void *GetTime, *SetTime, *GetWakeupTime, *SetWakeupTime, *SetVirtualAddressMap, *ConvertPointer;
    EFI_STATUS (*GetVariable)(CHAR16 *Name, EFI_GUID *Vendor, u32 *Attributes, UINTN *Size,
                              void *Data);
    void *GetNextVariableName, *SetVariable, *GetNextHighMonotonicCount;
    void (*ResetSystem)(u32 Type, EFI_STATUS Status, UINTN Size, void *Data);
} RUNTIME_SERVICES;

typedef struct {
    EFI_TABLE_HEADER Hdr;
    CHAR16 *FirmwareVendor;
    u32 FirmwareRevision;
    void *ConsoleInHandle, *ConIn, *ConsoleOutHandle;
    TEXT_OUT *ConOut;
    void *StandardErrorHandle, *StdErr;
    RUNTIME_SERVICES *RuntimeServices;
    BOOT_SERVICES *BootServices;
    UINTN NumberOfTableEntries;
    CONFIG_TABLE *ConfigurationTable;
} SYSTEM_TABLE;

typedef struct {
    EFI_STATUS (*GetMemoryAttributes)(void *This, u64 Base, u64 Length, u64 *Attributes);
    void *SetMemoryAttributes, *ClearMemoryAttributes;
} MEMORY_ATTRIBUTE_PROTOCOL;

static TEXT_OUT *out;

static void puts16(const CHAR16 *s) { out->OutputString(out, (CHAR16 *)s); }

static void puts8(const char *s) {
    CHAR16 buf[128];
    int n = 0;
    while (*s && n < 126) buf[n++] = (CHAR16)(u8)*s++;
    buf[n] = 0;
    puts16(buf);
}

static void hex(u64 v) {
    CHAR16 buf[20];
    int n = 0;
    buf[n++] = '0';
    buf[n++] = 'x';
    for (int shift = 60; shift >= 0; shift -= 4) {
        u32 d = (v >> shift) & 0xf;
        buf[n++] = (CHAR16)(d < 10 ? '0' + d : 'a' + d - 10);
    }
    buf[n] = 0;
    puts16(buf);
}

static void fact(const char *key, u64 v) {
    puts8("BOOTWATCH-PROBE ");
    puts8(key);
    puts8("=");
    hex(v);
    puts8("\r\n");
}

static void fact_str8(const char *key, const char *v) {
    puts8("BOOTWATCH-PROBE ");
    puts8(key);
    puts8("=");
    puts8(v);
    puts8("\r\n");
}

static int guid_eq(const EFI_GUID *x, const EFI_GUID *y) {
    const u8 *a = (const u8 *)x, *b = (const u8 *)y;
    for (int i = 0; i < 16; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

static int streq(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static int starts_with(const char *a, const char *prefix) {
    while (*prefix)
        if (*a++ != *prefix++) return 0;
    return 1;
}

/* The PSCI conduit from a flattened device tree: the `method` property of the root's `psci`
 * node. Returns the property's string or 0. */
static const char *fdt_psci_method(const u8 *fdt) {
    if (be32(fdt) != 0xd00dfeed) return 0;
    const u8 *p = fdt + be32(fdt + 8);
    const char *strings = (const char *)fdt + be32(fdt + 12);
    int depth = 0, in_psci = 0;
    for (int guard = 0; guard < 100000; guard++) {
        u32 tok = be32(p);
        p += 4;
        if (tok == 1) { /* BEGIN_NODE */
            const char *name = (const char *)p;
            int len = 0;
            while (name[len]) len++;
            p += (len + 4) & ~3;
            depth++;
            in_psci = depth == 2 && starts_with(name, "psci");
        } else if (tok == 2) { /* END_NODE */
            depth--;
            in_psci = 0;
        } else if (tok == 3) { /* PROP */
            u32 len = be32(p), nameoff = be32(p + 4);
            const char *value = (const char *)p + 8;
            if (in_psci && streq(strings + nameoff, "method")) return value;
            p += 8 + ((len + 3) & ~3u);
        } else if (tok == 4) { /* NOP */
        } else {
            return 0;
        }
    }
    return 0;
}

/* Set by the exception vector below when the SMCCC call traps. */
extern char probe_vectors[];
__asm__(
    ".text\n"
    ".balign 2048\n"
    ".globl probe_vectors\n"
    "probe_vectors:\n"
    ".rept 4\n" /* 0x000-0x180: current EL with SP_EL0 */
    "  b .\n"
    "  .balign 128\n"
    ".endr\n"
    /* 0x200... current EL with SP_ELx; only the synchronous entry (0x200) is expected */
    "  mrs x1, esr_el1\n"
    "  mov x17, #1\n"
    "  mrs x16, elr_el1\n"
    "  add x16, x16, #4\n"
    "  msr elr_el1, x16\n"
    "  eret\n"
    "  .balign 128\n"
    ".rept 11\n" /* the rest of SP_ELx, then lower ELs */
    "  b .\n"
    "  .balign 128\n"
    ".endr\n");

/* Issues SMCCC_VERSION (0x80000000) over `hvc #0` (conduit 1) or `smc #0` (conduit 2) with a
 * vector table of our own installed for the duration, so that an undefined-instruction
 * exception is caught instead of crashing the firmware. Returns x0; *trapped = 1 and *esr set
 * when the call trapped. Only at EL1. */
static u64 smccc_version_call(int conduit, u64 *trapped, u64 *esr) {
    u64 saved_vbar, saved_daif;
    __asm__ volatile("mrs %0, vbar_el1" : "=r"(saved_vbar));
    __asm__ volatile("mrs %0, daif" : "=r"(saved_daif));
    __asm__ volatile("msr daifset, #0xf\n msr vbar_el1, %0\n isb" ::"r"(probe_vectors) : "memory");
    register u64 x0 __asm__("x0") = 0x80000000;
    register u64 x1 __asm__("x1") = 0;
    register u64 x17 __asm__("x17") = 0;
    if (conduit == 1)
        __asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x17)::"x2", "x3", "x4", "x5", "x6",
                         "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16",
                         "memory");
    else
        __asm__ volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x17)::"x2", "x3", "x4", "x5", "x6",
                         "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16",
                         "memory");
    u64 r0 = x0, r1 = x1, t = x17;
    __asm__ volatile("msr vbar_el1, %0\n isb\n msr daif, %1" ::"r"(saved_vbar), "r"(saved_daif)
                     : "memory");
    *trapped = t;
    *esr = t ? r1 : 0;
    return r0;
}

/* Walks the EL1 (or EL2) stage-1 tables for `va` with a 4 KiB granule. Prints the leaf
 * descriptor, its level and the XN bits the table descriptors above it carry. */
static void walk(u64 va, u64 el) {
    u64 tcr, ttbr;
    if (el == 2) {
        __asm__ volatile("mrs %0, tcr_el2" : "=r"(tcr));
        __asm__ volatile("mrs %0, ttbr0_el2" : "=r"(ttbr));
    } else {
        __asm__ volatile("mrs %0, tcr_el1" : "=r"(tcr));
        __asm__ volatile("mrs %0, ttbr0_el1" : "=r"(ttbr));
    }
    fact("tcr", tcr);
    if (((tcr >> 14) & 3) != 0) { /* TG0: 0 = 4 KiB */
        fact_str8("pte_walk", "unsupported-granule");
        return;
    }
    u64 t0sz = tcr & 0x3f;
    u64 va_bits = 64 - t0sz;
    int level = 4 - (int)((va_bits - 12 + 8) / 9);
    u64 table = ttbr & 0x0000fffffffff000ull & ~1ull;
    u64 table_bits = 0;
    for (; level <= 3; level++) {
        int shift = 12 + 9 * (3 - level);
        u64 index = (va >> shift) & 0x1ff;
        u64 desc = ((volatile u64 *)table)[index];
        if ((desc & 1) == 0) {
            fact("pte_invalid_level", (u64)level);
            return;
        }
        if (level < 3 && (desc & 2)) { /* table */
            table_bits |= desc & (3ull << 59); /* PXNTable, UXNTable (XNTable at EL2) */
            table = desc & 0x0000fffffffff000ull;
            continue;
        }
        fact("pte", desc);
        fact("pte_level", (u64)level);
        fact("pte_table_bits", table_bits);
        return;
    }
}

static EFI_GUID mem_attr_guid = {0xf4560cf6, 0x40ec, 0x4b4a,
                                 {0xa1, 0x92, 0xbf, 0x1d, 0x57, 0xd0, 0xb1, 0x89}};
static EFI_GUID global_variable = {0x8be4df61, 0x93ca, 0x11d2,
                                   {0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}};
static EFI_GUID dtb_guid = {0xb1b621d5, 0xf19c, 0x41a5,
                            {0x83, 0x0b, 0xd9, 0x15, 0x2c, 0x69, 0xaa, 0xe0}};
static EFI_GUID acpi20_guid = {0x8868e871, 0xe4f1, 0x11d3,
                               {0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81}};

static void variable(SYSTEM_TABLE *st, CHAR16 *name, const char *key) {
    u8 value[8] = {0};
    UINTN size = sizeof value;
    EFI_STATUS s = st->RuntimeServices->GetVariable(name, &global_variable, 0, &size, value);
    puts8("BOOTWATCH-PROBE ");
    puts8(key);
    puts8("_status=");
    hex(s);
    puts8("\r\n");
    if (s == 0 && size >= 1) fact(key, value[0]);
}

/* ARM_BOOT_ARCH of the ACPI FADT (bit 0: PSCI compliant, bit 1: PSCI uses HVC). */
static int fadt_boot_arch(const u8 *rsdp, u64 *flags) {
    if (!starts_with((const char *)rsdp, "RSD PTR ")) return 0;
    const u8 *xsdt = (const u8 *)*(const u64 *)(rsdp + 24);
    if (!xsdt || !starts_with((const char *)xsdt, "XSDT")) return 0;
    u32 len = *(const u32 *)(xsdt + 4);
    for (u32 off = 36; off + 8 <= len; off += 8) {
        const u8 *t = (const u8 *)*(const u64 *)(xsdt + off);
        if (t && starts_with((const char *)t, "FACP")) {
            *flags = *(const u16 *)(t + 129);
            return 1;
        }
    }
    return 0;
}

EFI_STATUS efi_main(void *image, SYSTEM_TABLE *st) {
    (void)image;
    out = st->ConOut;
    BOOT_SERVICES *bs = st->BootServices;
    puts8("\r\nBOOTWATCH-PROBE begin=1\r\n");

    puts8("BOOTWATCH-PROBE vendor=");
    puts16(st->FirmwareVendor);
    puts8("\r\n");
    fact("fw_revision", st->FirmwareRevision);
    fact("uefi_revision", st->Hdr.Revision);

    u64 el, midr, pfr0;
    __asm__ volatile("mrs %0, CurrentEL" : "=r"(el));
    __asm__ volatile("mrs %0, midr_el1" : "=r"(midr));
    __asm__ volatile("mrs %0, id_aa64pfr0_el1" : "=r"(pfr0));
    el = (el >> 2) & 3;
    fact("current_el", el);
    fact("midr", midr);
    fact("id_aa64pfr0", pfr0);

    MEMORY_ATTRIBUTE_PROTOCOL *mem_attr = 0;
    EFI_STATUS s = bs->LocateProtocol(&mem_attr_guid, 0, (void **)&mem_attr);
    fact("mem_attr_status", s);

    u64 page = 0;
    s = bs->AllocatePages(0 /* AllocateAnyPages */, 2 /* EfiLoaderData */, 1, &page);
    fact("alloc_status", s);
    if (s == 0) {
        fact("loader_data_page", page);
        if (mem_attr) {
            u64 attrs = 0;
            s = mem_attr->GetMemoryAttributes(mem_attr, page, 4096, &attrs);
            fact("get_attrs_status", s);
            if (s == 0) fact("loader_data_attrs", attrs);
        }
        walk(page, el);
    }

    UINTN size = 0, key = 0, desc_size = 0;
    u32 version = 0;
    bs->GetMemoryMap(&size, 0, &key, &desc_size, &version);
    size += 16 * 64;
    MEMORY_DESCRIPTOR *map = 0;
    if (bs->AllocatePool(2, size, (void **)&map) == 0) {
        s = bs->GetMemoryMap(&size, map, &key, &desc_size, &version);
        fact("memmap_status", s);
        if (s == 0 && desc_size >= sizeof(MEMORY_DESCRIPTOR)) {
            u64 any_attr = 0, loader_data_attr = 0, page_attr = 0, n = size / desc_size;
            for (u64 i = 0; i < n; i++) {
                MEMORY_DESCRIPTOR *d = (MEMORY_DESCRIPTOR *)((u8 *)map + i * desc_size);
                any_attr |= d->Attribute;
                if (d->Type == 2) loader_data_attr |= d->Attribute;
                if (page >= d->PhysicalStart && page < d->PhysicalStart + d->NumberOfPages * 4096)
                    page_attr = d->Attribute;
            }
            fact("memmap_descriptors", n);
            fact("memmap_any_attrs", any_attr);
            fact("memmap_loader_data_attrs", loader_data_attr);
            fact("memmap_page_attrs", page_attr);
        }
        bs->FreePool(map);
    }
    if (page) bs->FreePages(page, 1);

    variable(st, (CHAR16 *)L"SecureBoot", "secure_boot");
    variable(st, (CHAR16 *)L"SetupMode", "setup_mode");

    int conduit = 0; /* 0 unknown, 1 hvc, 2 smc, 3 none */
    for (UINTN i = 0; i < st->NumberOfTableEntries; i++) {
        CONFIG_TABLE *t = &st->ConfigurationTable[i];
        if (guid_eq(&t->Guid, &dtb_guid)) {
            const char *m = fdt_psci_method((const u8 *)t->Table);
            fact_str8("dt_psci_method", m ? m : "none");
            if (m && streq(m, "hvc")) conduit = 1;
            else if (m && streq(m, "smc")) conduit = 2;
            else conduit = 3;
        } else if (guid_eq(&t->Guid, &acpi20_guid)) {
            u64 flags;
            if (fadt_boot_arch((const u8 *)t->Table, &flags)) {
                fact("fadt_arm_boot_arch", flags);
                if (conduit == 0) conduit = (flags & 1) ? ((flags & 2) ? 1 : 2) : 3;
            }
        }
    }
    if ((conduit == 1 || conduit == 2) && el == 1) {
        u64 trapped = 0, esr = 0;
        u64 r = smccc_version_call(conduit, &trapped, &esr);
        fact("smccc_version_trapped", trapped);
        if (trapped) fact("smccc_version_esr", esr);
        else fact("smccc_version_x0", r);
    }

    puts8("BOOTWATCH-PROBE end=1\r\n");
    st->RuntimeServices->ResetSystem(2 /* EfiResetShutdown */, 0, 0, 0);
    for (;;) __asm__ volatile("wfi");
}
