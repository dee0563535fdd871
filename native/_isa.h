/* What the CPU running this process can execute, and which kernel level pynn uses.
 *
 * Kernels that have several instruction-set variants compile every variant in one build
 * (PYNN_TARGET_* on the function, whatever -march the build used) and choose one at run
 * time: the best level the CPU supports, or the level PYNN_KERNEL names
 * (avx512 | avx2 | generic). Feature queries go through __builtin_cpu_supports, which
 * also checks (XGETBV) that the OS saves the vector registers: a CPU with AVX-512 under a
 * kernel that does not save zmm state counts as without it.
 *
 *   pynn_has_avx2()        AVX2 and FMA
 *   pynn_has_avx512()      AVX-512 F, VL, BW and DQ (what the AVX-512 kernels use)
 *   pynn_has_avx512vnni()  AVX512_VNNI (int8 dot products)
 *   pynn_has_avx512bf16()  AVX512_BF16 (vdpbf16ps)
 *   pynn_isa_available(level), pynn_isa_best(), pynn_isa_name(level)
 *   pynn_isa_requested()   the level PYNN_KERNEL names; PYNN_ISA_UNSET when unset,
 *                          PYNN_ISA_UNKNOWN for another value (pynn/_config.py raises)
 * GCC or clang on x86-64; elsewhere every query answers no and the level is generic. */
#ifndef PYNN_ISA_H
#define PYNN_ISA_H

#include <stdlib.h>
#include <string.h>

enum {
    PYNN_ISA_UNKNOWN = -2,
    PYNN_ISA_UNSET = -1,
    PYNN_ISA_GENERIC = 0,   /* the build's baseline: SSE vectors on x86-64, no FMA */
    PYNN_ISA_AVX2 = 1,      /* AVX2 + FMA, 32-byte vectors */
    PYNN_ISA_AVX512 = 2     /* AVX-512 F/VL/BW/DQ, 64-byte vectors */
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYNN_ISA_X86 1
#define PYNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYNN_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
/* The generic level must not inherit AVX or FMA from -march=native: without FMA nothing
   can be contracted, so a*b + c rounds twice in every inlined copy alike. */
#define PYNN_TARGET_GENERIC __attribute__((target("no-avx")))

static int pynn_cpu_has(int feature) {
    __builtin_cpu_init();   /* needed when called from a constructor, before libgcc's */
    switch (feature) {
    case 0: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case 1: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
                   && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case 2: return __builtin_cpu_supports("avx512vnni") != 0;
    case 3: return __builtin_cpu_supports("avx512bf16") != 0;
    }
    return 0;
}
#else
#define PYNN_ISA_X86 0
#define PYNN_TARGET_AVX2
#define PYNN_TARGET_AVX512
#define PYNN_TARGET_GENERIC
static int pynn_cpu_has(int feature) { (void)feature; return 0; }
#endif

static inline int pynn_has_avx2(void) { return pynn_cpu_has(0); }
static inline int pynn_has_avx512(void) { return pynn_has_avx2() && pynn_cpu_has(1); }
static inline int pynn_has_avx512vnni(void) { return pynn_has_avx512() && pynn_cpu_has(2); }
static inline int pynn_has_avx512bf16(void) { return pynn_has_avx512() && pynn_cpu_has(3); }

static inline int pynn_isa_available(int level) {
    switch (level) {
    case PYNN_ISA_GENERIC: return 1;
    case PYNN_ISA_AVX2: return pynn_has_avx2();
    case PYNN_ISA_AVX512: return pynn_has_avx512();
    }
    return 0;
}

static inline int pynn_isa_best(void) {
    return pynn_has_avx512() ? PYNN_ISA_AVX512
           : pynn_has_avx2() ? PYNN_ISA_AVX2 : PYNN_ISA_GENERIC;
}

static inline const char* pynn_isa_name(int level) {
    switch (level) {
    case PYNN_ISA_GENERIC: return "generic";
    case PYNN_ISA_AVX2: return "avx2";
    case PYNN_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

static inline int pynn_isa_requested(void) {
    const char* env = getenv("PYNN_KERNEL");
    int level;
    if (env == NULL || env[0] == '\0') return PYNN_ISA_UNSET;
    for (level = PYNN_ISA_GENERIC; level <= PYNN_ISA_AVX512; level++)
        if (strcmp(env, pynn_isa_name(level)) == 0) return level;
    return PYNN_ISA_UNKNOWN;
}

#endif
