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
 * Usage: efi-reload BZIMAGE INITRD CMDLINE
 * Physical layout: 0x7000 boot_params, 0x8000 entry stub (stack below
 * 0x9000), 0x20000 command line, 0x30000 EFI memory map, the kernel at its
 * pref_address, the initrd 16 MiB below the top of the largest RAM range.
 * Give the new kernel `nokaslr` so that it does not decompress over these.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static unsigned long long read_hex(const char *dir, const char *name) {
	char path[512];
	snprintf(path, sizeof path, "/sys/firmware/efi/runtime-map/%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (!f) die(path);
	unsigned long long v = 0;
	if (fscanf(f, "%llx", &v) != 1) fail(path);
	fclose(f);
	return v;
}

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

	/* The EFI memory map: every runtime region, not yet virtually mapped
	 * (OVMF has more than a page's worth of descriptors). */
	static uint8_t memmap[4 * PAGE];
	uint32_t desc_size = U32(bp, 0x1c8);
	if (desc_size < 40 || desc_size > 256) fail("odd efi_memdesc_size");
	size_t n = 0;
	DIR *d = opendir("/sys/firmware/efi/runtime-map");
	if (!d) die("/sys/firmware/efi/runtime-map");
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.') continue;
		if ((n + 1) * desc_size > sizeof memmap) fail("too many runtime regions");
		uint8_t *m = memmap + n++ * desc_size;
		U32(m, 0) = read_hex(e->d_name, "type");
		U64(m, 8) = read_hex(e->d_name, "phys_addr");
		U64(m, 16) = 0;
		U64(m, 24) = read_hex(e->d_name, "num_pages");
		U64(m, 32) = read_hex(e->d_name, "attribute");
	}
	closedir(d);
	if (!n) fail("no runtime regions in /sys/firmware/efi/runtime-map");

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
	};
	if (syscall(SYS_kexec_load, 0x8000UL, sizeof seg / sizeof seg[0], seg, KEXEC_ARCH_X86_64))
		die("kexec_load");
	printf("efi-reload: loaded; kernel at %#llx, initrd at %#llx (%zu bytes), %zu runtime regions, no SETUP_EFI\n",
	       (unsigned long long)pref, (unsigned long long)initrd_at, isize, n);
	return 0;
}
