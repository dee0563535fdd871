/* Intel AMX tiles, shared by the bf16 GEMMs (_bf16amx.h) and the int8 ones (_qgemm.h): the
 * OS permission, the one tile configuration both use, and the instructions as asm.
 *
 * Linux hands out the tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, once per
 * process, inherited by its threads and forked children); a kernel that refuses leaves pynn
 * on its AVX-512 kernels. The configuration (8 tiles of 16 rows x 64 bytes) is per thread:
 * every kernel loads it on entry and releases the tiles on exit, which keeps context
 * switches of threads that are not multiplying cheap. */
#ifndef PYNN_AMX_H
#define PYNN_AMX_H

#include <stdint.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__linux__) && defined(__x86_64__)
#define PYNN_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define PYNN_AMX 0
#endif

enum { PYNN_AMX_BF16 = 1, PYNN_AMX_INT8 = 2 };

/* Whether this CPU and OS run AMX tiles of `kind` (PYNN_AMX_BF16 or PYNN_AMX_INT8) for this
   process; asks Linux for the tile state the first time. */
static int pynn_amx_available(int kind) {
#if PYNN_AMX
    static int granted = -1;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
        return 0;
    if (kind == PYNN_AMX_BF16 &&
        (!__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("avx512bf16")))
        return 0;
    if (kind == PYNN_AMX_INT8 &&
        (!__builtin_cpu_supports("amx-int8") || !__builtin_cpu_supports("avx512vnni")))
        return 0;
    if (granted < 0) /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
        granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return granted;
#else
    (void)kind;
    return 0;
#endif
}

#if PYNN_AMX
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} pynn_amx_config;

/* The "memory" clobbers: GCC's own tile intrinsics are asm statements that do not tell the
   compiler they read or write memory, so stores into a panel could sink past the load. */
#define PYNN_AMX_LOAD(t, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"((long)(stride)) : "memory")
#define PYNN_AMX_STORE(t, base, stride)                                                  \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"((long)(stride)) \
                     : "memory")
#define PYNN_AMX_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
/* c += a . b: bf16 pairs into float32, and uint8 x int8 quads into int32 */
#define PYNN_AMX_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define PYNN_AMX_DPBUSD(c, a, b) \
    __asm__ volatile("tdpbusd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/* Tiles 0-3: the 2 x 2 C tiles; 4, 5: A's two row halves; 6, 7: B's column halves; each
   16 rows of 64 bytes. */
static inline void pynn_amx_begin(void) {
    pynn_amx_config cfg;
    int t;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

static inline void pynn_amx_end(void) { __asm__ volatile("tilerelease" ::); }
#endif

#endif
