/*
 * efi-reload: loads a bzImage with kexec_load(2) so that the new kernel is
 * EFI-booted *without* Linux's kexec handover: boot_params.efi_info points
 * at the system table and at a fresh EFI memory map (the runtime regions,
 * VirtualStart 0) and there is no SETUP_EFI setup data. The new kernel
 * therefore calls SetVirtualAddressMap again, as on a first boot.
 *
 * kexec-tools cannot do this: `kexec -l` passes efi_info only together with
 * SETUP_EFI, and zeroes efi_info when /sys/firmware/efi/runtime-map is
 * hidden. Lab use only (scenario S3); execute with `kexec -e`.
 *
 * Two things make the second boot reach SetVirtualAddressMap on any
 * firmware, so that what the firmware does with the second call is what
 * the scenario observes:
 *
 * - The system table. A firmware that converted the system table's own
 *   pointers (FirmwareVendor, RuntimeServices, ConfigurationTable) to
 *   virtual addresses at the first SetVirtualAddressMap, as EDK2/OVMF does
 *   (RuntimeDxe), leaves a table that a kernel booting in physical mode
 *   cannot read: Linux's decompressor fails in kernel_ident_mapping_init()
 *   on the first config-table access. If the table read through /dev/mem
 *   differs from the physical values the running kernel saved
 *   (/sys/firmware/efi/{fw_vendor,runtime,config_table}), the new kernel
 *   gets a copy with the physical values (CRC recomputed) in a reserved
 *   page that is also described as runtime data (so that Linux maps it in
 *   efi_mm, where it reads systab->runtime after the call). efivmm keeps
 *   its system table physical, so under efivmm the original is passed.
 * - The virtual addresses. Linux assigns the same VAs again only if it
 *   sees the same regions in the same order (efi_map_region(): top-down
 *   from -4 GiB, each region at its physical 2 MiB offset, boot-services
 *   regions included). A firmware that refuses the second call still has
 *   the first call's VAs in its RT table, and Linux calls
 *   SetVirtualAddressMap through them. So the map lists the runtime regions
 *   by their first-boot VA, with memory-mapped-I/O "filler" descriptors (at
 *   unused physical addresses far above RAM) where the first boot mapped
 *   regions that no longer exist (boot services code and data), sized so
 *   that every runtime region gets its first-boot VA again.
 *
 * Usage: efi-reload BZIMAGE INITRD CMDLINE
 * Physical layout: 0x7000 boot_params, 0x8000 entry stub (stack below
 * 0x9000), 0x20000 command line, 0x30000 EFI memory map, 0x34000 the
 * system table copy (if any), the kernel at its pref_address, the initrd
 * 16 MiB below the top of the largest RAM range. Give the new kernel
 * `nokaslr` so that it does not decompress over these.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEXEC_ARCH_X86_64 (62 << 16)
#define PAGE 4096UL
#define ROUND_UP(x) (((x) + PAGE - 1) & ~(PAGE - 1))

struct kexec_segment { const void *buf; size_t bufsz; unsigned long mem; size_t memsz; };

static void die(const char *what) { fprintf(stderr, "efi-reload: %s: %s\n", what, strerror(errno)); exit(1); }
static void fail(const char *what) { fprintf(stderr, "efi-reload: %s\n", what); exit(1); }

static uint8_t *slurp(const char *path, size_t *size) {
	int fd = open(path, O_RDONLY);
	if (fd < 0) die(path);
	struct stat st;
	if (fstat(fd, &st)) die(path);
	size_t cap = st.st_size ? (size_t)st.st_size : 4096, len = 0;
	uint8_t *buf = malloc(cap);
	for (;;) {
		if (len == cap) buf = realloc(buf, cap *= 2);
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) die(path);
		if (n == 0) break;
		len += n;
	}
	close(fd);
	*size = len;
	return buf;
}

static unsigned long long read_hex(const char *path) {
	FILE *f = fopen(path, "r");
	if (!f) die(path);
	unsigned long long v = 0;
	if (fscanf(f, "%llx", &v) != 1) fail(path);
	fclose(f);
	return v;
}

static unsigned long long map_hex(const char *dir, const char *name) {
	char path[512];
	snprintf(path, sizeof path, "/sys/firmware/efi/runtime-map/%s/%s", dir, name);
	return read_hex(path);
}

/* The CRC32 of the UEFI table headers (IEEE 802.3, reflected). */
static uint32_t crc32(const uint8_t *p, size_t n) {
	uint32_t c = 0xffffffff;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320 & -(c & 1));
	}
	return ~c;
}

struct region { uint32_t type; uint64_t phys, pages, attr, virt; };
static int by_virt(const void *a, const void *b) {
	const struct region *x = a, *y = b;
	return x->virt < y->virt ? -1 : x->virt > y->virt;
}

#define EFI_VA_START 0xffffffff00000000ULL /* Linux x86-64: -4 GiB */
#define PMD_SIZE 0x200000ULL
#define EFI_MEMORY_MAPPED_IO 11
#define EFI_RUNTIME_SERVICES_DATA 6
#define EFI_MEMORY_UC 0x1ULL
#define EFI_MEMORY_WB 0x8ULL
#define EFI_MEMORY_RUNTIME 0x8000000000000000ULL
#define FILLER_BASE 0x8000000000ULL /* 512 GiB: no RAM or device of the lab's guests */
#define SYSTAB_COPY 0x34000UL

#define U8(p, o) (*(uint8_t *)((p) + (o)))
#define U16(p, o) (*(uint16_t *)((p) + (o)))
#define U32(p, o) (*(uint32_t *)((p) + (o)))
#define U64(p, o) (*(uint64_t *)((p) + (o)))

int main(int argc, char **argv) {
	if (argc != 4) fail("usage: efi-reload BZIMAGE INITRD CMDLINE");
	size_t ksize, isize, bpsize;
	uint8_t *kernel = slurp(argv[1], &ksize), *initrd = slurp(argv[2], &isize);
	uint8_t *old = slurp("/sys/kernel/boot_params/data", &bpsize);
	if (bpsize < 4096) fail("short /sys/kernel/boot_params/data");
	if (ksize < 0x1000 || U32(kernel, 0x202) != 0x53726448) fail("not a bzImage");
	if (!(U16(kernel, 0x236) & 1)) fail("the kernel has no 64-bit entry (XLF_KERNEL_64)");

	/* boot_params: the running kernel's (efivmm's e820 and efi_info), with
	 * this kernel's setup header, our command line, initrd and memory map. */
	static uint8_t bp[4096];
	memcpy(bp, old, 4096);
	unsigned setup_sects = U8(kernel, 0x1f1) ? U8(kernel, 0x1f1) : 4;
	size_t hdr_end = 0x202 + U8(kernel, 0x201);
	memcpy(bp + 0x1f1, kernel + 0x1f1, hdr_end - 0x1f1);
	if (memcmp(bp + 0x1c0, "EL64", 4)) fail("the running kernel was not booted with efi_info EL64");
	uint64_t pref = U64(kernel, 0x258);
	size_t pm_off = (setup_sects + 1) * 512, pm_size = ksize - pm_off;

	/* The runtime regions as the running kernel mapped them. */
	static struct region rt[256];
	size_t nrt = 0;
	DIR *d = opendir("/sys/firmware/efi/runtime-map");
	if (!d) die("/sys/firmware/efi/runtime-map");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		if (nrt == sizeof rt / sizeof rt[0]) fail("too many runtime regions");
		rt[nrt++] = (struct region){ map_hex(e->d_name, "type"), map_hex(e->d_name, "phys_addr"),
			map_hex(e->d_name, "num_pages"), map_hex(e->d_name, "attribute"), map_hex(e->d_name, "virt_addr") };
	}
	closedir(d);
	if (!nrt) fail("no runtime regions in /sys/firmware/efi/runtime-map");
	qsort(rt, nrt, sizeof rt[0], by_virt);

	/* The system table: as it is, or a copy with its physical pointers. */
	uint32_t desc_size = U32(bp, 0x1c8);
	if (desc_size < 40 || desc_size > 256) fail("odd efi_memdesc_size");
	uint64_t systab = (uint64_t)U32(bp, 0x1d8) << 32 | U32(bp, 0x1c4);
	static uint8_t st[PAGE];
	/* mmap, not read: read(2) of /dev/mem stops at the end of RAM
	 * (high_memory), and efivmm's shim lies above it. */
	int fd = open("/dev/mem", O_RDONLY | O_SYNC);
	if (fd < 0) die("/dev/mem");
	uint64_t off = systab & (PAGE - 1);
	if (off + 120 > PAGE) fail("the system table crosses a page");
	uint8_t *m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, systab - off);
	if (m == MAP_FAILED) die("mapping the system table from /dev/mem");
	memcpy(st, m + off, 120);
	munmap(m, PAGE);
	close(fd);
	if (U64(st, 0) != 0x5453595320494249ULL) fail("no system table signature at efi_systab");
	uint64_t vendor = read_hex("/sys/firmware/efi/fw_vendor"), runtime = read_hex("/sys/firmware/efi/runtime"),
		 tables = read_hex("/sys/firmware/efi/config_table");
	int copy = U64(st, 24) != vendor || U64(st, 88) != runtime || U64(st, 112) != tables;
	if (copy) {
		printf("efi-reload: the system table's pointers were converted (RuntimeServices %#llx, physical %#llx): "
		       "passing a copy with the physical ones at %#lx\n",
		       (unsigned long long)U64(st, 88), (unsigned long long)runtime, SYSTAB_COPY);
		U64(st, 24) = vendor, U64(st, 88) = runtime, U64(st, 112) = tables;
		U32(st, 16) = 0;
		U32(st, 16) = crc32(st, U32(st, 12) < 120 ? U32(st, 12) : 120);
		U32(bp, 0x1c4) = SYSTAB_COPY, U32(bp, 0x1d8) = 0;
		/* ... in an e820-reserved page (Linux also keeps the first MiB). */
		uint8_t ne = U8(bp, 0x1e8);
		if (ne >= 128) fail("e820 table full");
		uint8_t *ent = bp + 0x2d0 + 20 * ne;
		U64(ent, 0) = SYSTAB_COPY, U64(ent, 8) = PAGE, U32(ent, 16) = 2;
		U8(bp, 0x1e8) = ne + 1;
	}

	/* The EFI memory map, in ascending first-boot VA: the copy (lowest, so
	 * that it moves no other region), then each runtime region followed by
	 * a filler up to the next one's end (Linux maps the map backwards,
	 * from -4 GiB down). */
	static uint8_t memmap[4 * PAGE];
	size_t n = 0;
	uint64_t filler_at = FILLER_BASE, fillers = 0;
#define DESC(t, p, np, a) do { \
		if ((n + 1) * desc_size > sizeof memmap) fail("too many memory map descriptors"); \
		uint8_t *m = memmap + n++ * desc_size; \
		U32(m, 0) = (t), U64(m, 8) = (p), U64(m, 16) = 0, U64(m, 24) = (np), U64(m, 32) = (a); \
	} while (0)
	if (copy) DESC(EFI_RUNTIME_SERVICES_DATA, SYSTAB_COPY, 1, EFI_MEMORY_RUNTIME | EFI_MEMORY_WB);
	for (size_t i = 0; i < nrt; i++) {
		DESC(rt[i].type, rt[i].phys, rt[i].pages, rt[i].attr);
		uint64_t end = rt[i].virt + rt[i].pages * PAGE;
		uint64_t next = i + 1 < nrt ? rt[i + 1].virt : EFI_VA_START;
		if (!rt[i].virt || (rt[i].virt ^ rt[i].phys) & (PMD_SIZE - 1) & ~(PAGE - 1) || next < end)
			fail("the runtime regions' VAs are not Linux's top-down layout");
		if (next > end) { /* a filler of next - end bytes at the 2 MiB offset of `end` */
			uint64_t pa = (filler_at + PMD_SIZE - 1) / PMD_SIZE * PMD_SIZE + (end & (PMD_SIZE - 1));
			DESC(EFI_MEMORY_MAPPED_IO, pa, (next - end) / PAGE, EFI_MEMORY_RUNTIME | EFI_MEMORY_UC);
			filler_at = pa + (next - end);
			fillers++;
		}
	}
#undef DESC

	/* The initrd below the top of the largest RAM range of the e820 map. */
	uint64_t top = 0, best = 0;
	for (unsigned i = 0; i < U8(bp, 0x1e8); i++) {
		uint8_t *ent = bp + 0x2d0 + 20 * i;
		if (U32(ent, 16) == 1 && U64(ent, 8) > best) best = U64(ent, 8), top = U64(ent, 0) + U64(ent, 8);
	}
	uint64_t initrd_at = (top - (16 << 20) - isize) & ~0xfffffUL;
	if (!top || initrd_at < pref + 0x8000000UL) fail("no room for the initrd");

	const char *cmdline = argv[3];
	size_t clen = strlen(cmdline) + 1;
	if (clen > PAGE) fail("command line too long");

	U8(bp, 0x210) = 0xff;                   /* type_of_loader */
	U32(bp, 0x228) = 0x20000;               /* cmd_line_ptr */
	U32(bp, 0x238) = clen - 1;              /* cmdline_size */
	U32(bp, 0x218) = initrd_at;             /* ramdisk_image */
	U32(bp, 0x21c) = isize;                 /* ramdisk_size */
	U32(bp, 0x0c0) = initrd_at >> 32;       /* ext_ramdisk_image */
	U32(bp, 0x0c4) = isize >> 32;           /* ext_ramdisk_size */
	U32(bp, 0x0c8) = 0;                     /* ext_cmd_line_ptr */
	U64(bp, 0x250) = 0;                     /* setup_data: none, so no SETUP_EFI */
	U32(bp, 0x1d0) = 0x30000;               /* efi_memmap */
	U32(bp, 0x1d4) = n * desc_size;         /* efi_memmap_size */
	U32(bp, 0x1dc) = 0;                     /* efi_memmap_hi */
	U8(bp, 0x1ef) = 0;                      /* sentinel */

	/* The entry stub: mov rsp, 0x8ff0; mov rsi, 0x7000; mov rax, entry; jmp rax */
	static uint8_t stub[PAGE];
	uint64_t entry = pref + 0x200, rsp = 0x8ff0, rsi = 0x7000;
	uint8_t *s = stub;
	*s++ = 0x48; *s++ = 0xbc; memcpy(s, &rsp, 8); s += 8;
	*s++ = 0x48; *s++ = 0xbe; memcpy(s, &rsi, 8); s += 8;
	*s++ = 0x48; *s++ = 0xb8; memcpy(s, &entry, 8); s += 8;
	*s++ = 0xff; *s++ = 0xe0;

	struct kexec_segment seg[] = {
		{ bp, PAGE, 0x7000, PAGE },
		{ stub, PAGE, 0x8000, PAGE },
		{ cmdline, clen, 0x20000, PAGE },
		{ memmap, sizeof memmap, 0x30000, sizeof memmap },
		{ kernel + pm_off, pm_size, pref, ROUND_UP(pm_size) },
		{ initrd, isize, initrd_at, ROUND_UP(isize) },
		{ st, PAGE, SYSTAB_COPY, PAGE }, /* last: only with a copy */
	};
	if (syscall(SYS_kexec_load, 0x8000UL, sizeof seg / sizeof seg[0] - !copy, seg, KEXEC_ARCH_X86_64))
		die("kexec_load");
	printf("efi-reload: loaded; kernel at %#llx, initrd at %#llx (%zu bytes), %zu runtime regions at their "
	       "first-boot VAs (%llu fillers), system table %s, no SETUP_EFI\n",
	       (unsigned long long)pref, (unsigned long long)initrd_at, isize, nrt, (unsigned long long)fillers,
	       copy ? "copied" : "as it is");
	return 0;
}
