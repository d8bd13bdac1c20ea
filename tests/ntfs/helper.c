/* A small libntfs-3g helper for the NTFS tests: what ntfscp cannot do without a FUSE mount.
 *
 *   ntfs-helper IMAGE mkdir PATH...   make directories (parents must exist; made in order)
 *   ntfs-helper IMAGE rm PATH...      delete files (their clusters become free, their bytes stay)
 *   ntfs-helper IMAGE interleave PIECE DST1 SRC1 DST2 SRC2
 *                                     create two files and write them PIECE bytes at a time, in
 *                                     turn, from their ends back: both come out fragmented
 *   ntfs-helper IMAGE copy SRC DST     copy the host directory tree SRC (regular files and
 *                                     directories; links and others skipped) to the new
 *                                     directory DST, in one mount (the bench's datasets)
 *
 * Paths are absolute, '/'-separated, UTF-8. Exits non-zero with a message on any failure.
 * Compiled by the tests (tests/src/ntfs.rs) with gcc against Debian's ntfs-3g-dev. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <ntfs-3g/types.h>
#include <ntfs-3g/volume.h>
#include <ntfs-3g/dir.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/unistr.h>
#include <ntfs-3g/attrib.h>

static ntfs_inode *parent_of(ntfs_volume *vol, char *path, char **name);

/* Creates the regular file PATH and opens its unnamed $DATA. */
static ntfs_attr *create_file(ntfs_volume *vol, const char *dst, ntfs_inode **out) {
    char *path = strdup(dst), *name = NULL;
    ntfs_inode *dir = parent_of(vol, path, &name);
    if (!dir) { fprintf(stderr, "%s: parent: %s\n", dst, strerror(errno)); return NULL; }
    ntfschar *uname = NULL;
    int ulen = ntfs_mbstoucs(name, &uname);
    ntfs_inode *ni = ulen < 0 ? NULL : ntfs_create(dir, const_cpu_to_le32(0), uname, ulen, S_IFREG);
    ntfs_inode_close(dir);
    free(uname);
    free(path);
    if (!ni) { fprintf(stderr, "%s: ntfs_create: %s\n", dst, strerror(errno)); return NULL; }
    *out = ni;
    ntfs_attr *na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
    if (!na) fprintf(stderr, "%s: ntfs_attr_open: %s\n", dst, strerror(errno));
    return na;
}

static ntfs_inode *make_dir(ntfs_volume *vol, const char *dst) {
    char *path = strdup(dst), *name = NULL;
    ntfs_inode *dir = parent_of(vol, path, &name);
    ntfs_inode *ni = NULL;
    ntfschar *uname = NULL;
    int ulen = dir ? ntfs_mbstoucs(name, &uname) : -1;
    if (ulen >= 0) ni = ntfs_create(dir, const_cpu_to_le32(0), uname, ulen, S_IFDIR);
    if (dir) ntfs_inode_close(dir);
    free(uname);
    free(path);
    return ni;
}

static long copied_files, copied_bytes;

static int copy_tree(ntfs_volume *vol, const char *src, const char *dst, char *buf, size_t bufsize) {
    ntfs_inode *d = make_dir(vol, dst);
    if (!d) { fprintf(stderr, "%s: mkdir: %s\n", dst, strerror(errno)); return 1; }
    ntfs_inode_close(d);
    DIR *dir = opendir(src);
    if (!dir) { perror(src); return 1; }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char s[4096], t[4096];
        snprintf(s, sizeof s, "%s/%s", src, e->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, e->d_name);
        struct stat st;
        if (lstat(s, &st)) continue;
        if (S_ISDIR(st.st_mode)) { rc = copy_tree(vol, s, t, buf, bufsize); continue; }
        if (!S_ISREG(st.st_mode)) continue;
        FILE *in = fopen(s, "rb");
        if (!in) continue;
        ntfs_inode *ni;
        ntfs_attr *na = create_file(vol, t, &ni);
        if (!na) { fclose(in); rc = 1; break; }
        s64 pos = 0;
        size_t n;
        while ((n = fread(buf, 1, bufsize, in)) > 0) {
            if (ntfs_attr_pwrite(na, pos, n, buf) != (s64)n) {
                fprintf(stderr, "%s: ntfs_attr_pwrite: %s\n", t, strerror(errno));
                rc = 1;
                break;
            }
            pos += n;
        }
        fclose(in);
        ntfs_attr_close(na);
        ntfs_inode_close(ni);
        copied_files++;
        copied_bytes += pos;
    }
    closedir(dir);
    return rc;
}

static int interleave(ntfs_volume *vol, char **argv) {
    long piece = atol(argv[0]);
    FILE *src[2] = { fopen(argv[2], "rb"), fopen(argv[4], "rb") };
    if (piece <= 0 || !src[0] || !src[1]) { fprintf(stderr, "interleave: bad piece or source\n"); return 1; }
    ntfs_inode *ni[2];
    ntfs_attr *na[2] = { create_file(vol, argv[1], &ni[0]), create_file(vol, argv[3], &ni[1]) };
    if (!na[0] || !na[1]) return 1;
    long size[2], left[2];
    for (int k = 0; k < 2; k++) {
        fseek(src[k], 0, SEEK_END);
        size[k] = ftell(src[k]);
        /* Pieces from the last to the first: each is allocated after the one written before
         * it, so consecutive pieces of a file are never neighbours on the disk. */
        left[k] = (size[k] + piece - 1) / piece;
    }
    char *buf = malloc(piece);
    while (left[0] > 0 || left[1] > 0) {
        for (int k = 0; k < 2; k++) {
            if (left[k] == 0) continue;
            long pos = --left[k] * piece;
            long n = size[k] - pos < piece ? size[k] - pos : piece;
            fseek(src[k], pos, SEEK_SET);
            if (fread(buf, 1, n, src[k]) != (size_t)n) { perror("fread"); return 1; }
            if (ntfs_attr_pwrite(na[k], pos, n, buf) != (s64)n) {
                fprintf(stderr, "interleave: ntfs_attr_pwrite: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        ntfs_attr_close(na[k]);
        ntfs_inode_close(ni[k]);
        fclose(src[k]);
    }
    free(buf);
    return 0;
}

static ntfs_inode *parent_of(ntfs_volume *vol, char *path, char **name) {
    char *slash = strrchr(path, '/');
    if (!slash) return NULL;
    *name = slash + 1;
    if (slash == path) return ntfs_inode_open(vol, FILE_root);
    *slash = '\0';
    ntfs_inode *p = ntfs_pathname_to_inode(vol, NULL, path);
    *slash = '/';
    return p;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s IMAGE mkdir|rm|copy|interleave ARGS...\n", argv[0]);
        return 2;
    }
    ntfs_volume *vol = ntfs_mount(argv[1], 0);
    if (!vol) { perror("ntfs_mount"); return 1; }
    int rc = 0;
    if (!strcmp(argv[2], "copy")) {
        size_t bufsize = 1 << 20;
        char *buf = malloc(bufsize);
        rc = argc == 5 ? copy_tree(vol, argv[3], argv[4], buf, bufsize) : 2;
        free(buf);
        fprintf(stderr, "copied %ld files, %ld bytes\n", copied_files, copied_bytes);
        if (ntfs_umount(vol, FALSE)) { perror("ntfs_umount"); rc = 1; }
        return rc;
    }
    if (!strcmp(argv[2], "interleave")) {
        rc = argc == 8 ? interleave(vol, argv + 3) : 2;
        if (ntfs_umount(vol, FALSE)) { perror("ntfs_umount"); rc = 1; }
        return rc;
    }
    /* One mount per path: several deletions in one mount left some entries behind. */
    ntfs_umount(vol, FALSE);
    for (int i = 3; i < argc && rc == 0; i++) {
        vol = ntfs_mount(argv[1], 0);
        if (!vol) { perror("ntfs_mount"); return 1; }
        char *path = strdup(argv[i]);
        char *name = NULL;
        ntfs_inode *dir = parent_of(vol, path, &name);
        if (!dir) { fprintf(stderr, "%s: parent: %s\n", argv[i], strerror(errno)); rc = 1; ntfs_umount(vol, FALSE); break; }
        ntfschar *uname = NULL;
        int ulen = ntfs_mbstoucs(name, &uname);
        if (ulen < 0) { perror("ntfs_mbstoucs"); rc = 1; ntfs_umount(vol, FALSE); break; }
        if (!strcmp(argv[2], "mkdir")) {
            ntfs_inode *ni = ntfs_create(dir, const_cpu_to_le32(0), uname, ulen, S_IFDIR);
            if (!ni) { fprintf(stderr, "%s: ntfs_create: %s\n", argv[i], strerror(errno)); rc = 1; }
            else ntfs_inode_close(ni);
            ntfs_inode_close(dir);
        } else if (!strcmp(argv[2], "rm")) {
            ntfs_inode *ni = ntfs_pathname_to_inode(vol, NULL, argv[i]);
            if (!ni) { fprintf(stderr, "%s: %s\n", argv[i], strerror(errno)); rc = 1; ntfs_inode_close(dir); }
            /* ntfs_delete closes both inodes. */
            else if (ntfs_delete(vol, argv[i], ni, dir, uname, ulen)) {
                fprintf(stderr, "%s: ntfs_delete: %s\n", argv[i], strerror(errno)); rc = 1;
            }
        } else {
            fprintf(stderr, "unknown command %s\n", argv[2]); rc = 2; ntfs_inode_close(dir);
        }
        free(uname);
        free(path);
        if (ntfs_umount(vol, FALSE)) { perror("ntfs_umount"); rc = 1; }
    }
    return rc;
}
