/* Reads a Xen dump-core file (docs/misc/dump-core-format.txt) with Xen's own structure definitions
 * and prints what it finds, one "key value" per line, for the test to judge:
 *   magic, vcpus, pages, pagesize, xen, format, prstatus_bytes, pfns, rip0, cr3_0, flags0, shared_info,
 *   and "found PFN" for the page holding the string given as the second argument. */
#define _GNU_SOURCE
#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/xen.h>
#include <xen/elfnote.h>
#include <xen/version.h>

static unsigned char *img;
static long size;

static Elf64_Shdr *section(const char *name)
{
    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    Elf64_Shdr *sh = (Elf64_Shdr *)(img + eh->e_shoff);
    const char *strtab = (const char *)img + sh[eh->e_shstrndx].sh_offset;
    for (int i = 0; i < eh->e_shnum; i++)
        if (!strcmp(strtab + sh[i].sh_name, name))
            return &sh[i];
    return NULL;
}

int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    fseek(f, 0, SEEK_END); size = ftell(f); rewind(f);
    img = malloc(size);
    if (fread(img, 1, size, f) != (size_t)size) { fprintf(stderr, "short read\n"); return 2; }
    Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_type != ET_CORE) {
        fprintf(stderr, "not a 64-bit ELF core\n"); return 1;
    }
    printf("phnum %d\n", eh->e_phnum);

    uint64_t nr_vcpus = 0, nr_pages = 0, page_size = 0;
    Elf64_Shdr *notes = section(".note.Xen");
    if (!notes) { fprintf(stderr, "no .note.Xen\n"); return 1; }
    for (uint64_t off = 0; off < notes->sh_size;) {
        Elf64_Nhdr *n = (Elf64_Nhdr *)(img + notes->sh_offset + off);
        const char *name = (const char *)(n + 1);
        const uint64_t *desc = (const uint64_t *)(name + ((n->n_namesz + 3) & ~3));
        if (strcmp(name, "Xen")) { fprintf(stderr, "note named %s\n", name); return 1; }
        switch (n->n_type) {
        case XEN_ELFNOTE_DUMPCORE_NONE: printf("none %u\n", n->n_descsz); break;
        case XEN_ELFNOTE_DUMPCORE_HEADER:
            printf("magic %#llx\n", (unsigned long long)desc[0]);
            nr_vcpus = desc[1]; nr_pages = desc[2]; page_size = desc[3];
            printf("vcpus %llu\npages %llu\npagesize %llu\n", (unsigned long long)nr_vcpus,
                   (unsigned long long)nr_pages, (unsigned long long)page_size);
            break;
        case XEN_ELFNOTE_DUMPCORE_XEN_VERSION: {
            const char *extra = (const char *)&desc[2];
            const char *caps = extra + sizeof(xen_extraversion_t) + sizeof(xen_compile_info_t);
            printf("xen %llu.%llu%s\n", (unsigned long long)desc[0], (unsigned long long)desc[1], extra);
            printf("caps %s\n", caps);
            break;
        }
        case XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION:
            printf("format %llu.%llu\n", (unsigned long long)(desc[0] >> 32), (unsigned long long)(desc[0] & 0xffffffff));
            break;
        default: printf("note %#x\n", n->n_type);
        }
        off += sizeof(*n) + ((n->n_namesz + 3) & ~3) + ((n->n_descsz + 3) & ~3);
    }

    Elf64_Shdr *pr = section(".xen_prstatus"), *si = section(".xen_shared_info");
    Elf64_Shdr *pfn = section(".xen_pfn"), *pages = section(".xen_pages");
    if (!pr || !pfn || !pages) { fprintf(stderr, "a required section is missing\n"); return 1; }
    printf("prstatus_ok %d\n", pr->sh_size == nr_vcpus * sizeof(vcpu_guest_context_t));
    vcpu_guest_context_t *c0 = (vcpu_guest_context_t *)(img + pr->sh_offset);
    printf("rip0 %#llx\ncr3_0 %#llx\nflags0 %#lx\n", (unsigned long long)c0->user_regs.rip,
           (unsigned long long)c0->ctrlreg[3], c0->flags);
    printf("shared_info %d\n", si && si->sh_size == 4096);
    printf("pfns %llu\n", (unsigned long long)(pfn->sh_size / 8));
    printf("pages_ok %d\n", pages->sh_size == nr_pages * page_size && pages->sh_offset % page_size == 0
           && pages->sh_offset + pages->sh_size <= (uint64_t)size);
    const uint64_t *pfns = (const uint64_t *)(img + pfn->sh_offset);
    if (argc > 2)
        for (uint64_t i = 0; i < nr_pages; i++)
            if (memmem(img + pages->sh_offset + i * page_size, page_size, argv[2], strlen(argv[2])))
                printf("found %#llx\n", (unsigned long long)pfns[i]);
    return 0;
}
