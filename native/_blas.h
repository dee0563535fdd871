/* BLAS sgemm/dgemm without importing SciPy's Python modules. In order (native/_blas.pxd's
 * blas_init): SciPy's wheel OpenBLAS loaded straight from its file (pynn_blas_load; LP64,
 * names scipy_?gemm_), the library pynn's kernels have always called; else an OpenBLAS
 * already in the process (NumPy's wheel: ILP64, scipy_?gemm_64_); else any loaded library
 * exporting the plain Fortran names (a NumPy built on a system BLAS); else scipy.linalg is
 * imported and the search runs again.
 *
 * SciPy's OpenBLAS stays first because pynn sets OPENBLAS_THREAD_TIMEOUT (pynn/__init__.py)
 * before loading it, while NumPy's may have been loaded (and read it) before pynn was
 * imported; the im2col convolutions call BLAS with its own threads. Importing scipy.linalg
 * only to reach that library cost a process 190 ms and 27 MiB before its first prediction
 * (AMD EPYC, no bytecode cache; bench/bench_inference.py --footprint).
 *
 * Each extension module that includes this header holds its own copy of the pointers and
 * fills it once at import; every module resolves to the same library. */
#ifndef PYNN_BLAS_H
#define PYNN_BLAS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <string.h>

typedef void (*pynn_sgemm64_fn)(const char*, const char*, const int64_t*, const int64_t*,
                                const int64_t*, const float*, const float*, const int64_t*,
                                const float*, const int64_t*, const float*, float*,
                                const int64_t*);
typedef void (*pynn_dgemm64_fn)(const char*, const char*, const int64_t*, const int64_t*,
                                const int64_t*, const double*, const double*, const int64_t*,
                                const double*, const int64_t*, const double*, double*,
                                const int64_t*);
typedef void (*pynn_sgemm32_fn)(const char*, const char*, const int*, const int*, const int*,
                                const float*, const float*, const int*, const float*,
                                const int*, const float*, float*, const int*);
typedef void (*pynn_dgemm32_fn)(const char*, const char*, const int*, const int*, const int*,
                                const double*, const double*, const int*, const double*,
                                const int*, const double*, double*, const int*);

static void* pynn_sgemm_ptr = NULL;
static void* pynn_dgemm_ptr = NULL;
static int pynn_blas_ilp64 = 0;

/* (sgemm, dgemm, ilp64) name sets, in order of preference. */
static const char* const pynn_blas_names[][2] = {
    {"scipy_sgemm_64_", "scipy_dgemm_64_"},
    {"sgemm_64_", "dgemm_64_"},
    {"scipy_sgemm_", "scipy_dgemm_"},
    {"sgemm_", "dgemm_"},
};
static const int pynn_blas_is_ilp64[] = {1, 1, 0, 0};

/* 1 (the pointers set) when the library behind handle lib exports one of the name sets. */
static int pynn_blas_pick(void* lib) {
    int k;
    for (k = 0; k < 4; k++) {
        void* s = dlsym(lib, pynn_blas_names[k][0]);
        void* d = dlsym(lib, pynn_blas_names[k][1]);
        if (s != NULL && d != NULL) {
            pynn_sgemm_ptr = s;
            pynn_dgemm_ptr = d;
            pynn_blas_ilp64 = pynn_blas_is_ilp64[k];
            return 1;
        }
    }
    return 0;
}

static int pynn_blas_try(const char* path) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    int found;
    if (lib == NULL) return 0;
    found = pynn_blas_pick(lib);
    dlclose(lib); /* a NOLOAD handle: whoever loaded the library keeps it */
    return found;
}

static int pynn_blas_visit(struct dl_phdr_info* info, size_t size, void* want) {
    const char* name = info->dlpi_name;
    (void)size;
    if (name == NULL || name[0] == '\0' || strstr(name, (const char*)want) == NULL) return 0;
    return pynn_blas_try(name);
}

/* 1 when the library at path (loaded here, kept loaded) exports a BLAS. */
static int pynn_blas_load(const char* path) {
    void* lib;
    if (pynn_sgemm_ptr != NULL) return 1;
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return 0;
    if (pynn_blas_pick(lib)) return 1; /* kept open: the kernels call into it */
    dlclose(lib);
    return 0;
}

/* 1 when a BLAS was found among the loaded objects: an OpenBLAS first, then any library. */
static int pynn_blas_find(void) {
    if (pynn_sgemm_ptr != NULL) return 1;
    if (dl_iterate_phdr(pynn_blas_visit, (void*)"openblas")) return 1;
    return dl_iterate_phdr(pynn_blas_visit, (void*)"blas") != 0;
}

/* The library sgemm lives in, for its thread controls (native/dense.pyx). */
static void* pynn_blas_sgemm_address(void) { return pynn_sgemm_ptr; }

static inline void pynn_sgemm(const char* ta, const char* tb, int m, int n, int k, float alpha,
                              const float* a, int lda, const float* b, int ldb, float beta,
                              float* c, int ldc) {
    if (pynn_blas_ilp64) {
        const int64_t m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
        ((pynn_sgemm64_fn)pynn_sgemm_ptr)(ta, tb, &m_, &n_, &k_, &alpha, a, &lda_, b, &ldb_,
                                          &beta, c, &ldc_);
    } else {
        ((pynn_sgemm32_fn)pynn_sgemm_ptr)(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta,
                                          c, &ldc);
    }
}

static inline void pynn_dgemm(const char* ta, const char* tb, int m, int n, int k,
                              double alpha, const double* a, int lda, const double* b, int ldb,
                              double beta, double* c, int ldc) {
    if (pynn_blas_ilp64) {
        const int64_t m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
        ((pynn_dgemm64_fn)pynn_dgemm_ptr)(ta, tb, &m_, &n_, &k_, &alpha, a, &lda_, b, &ldb_,
                                          &beta, c, &ldc_);
    } else {
        ((pynn_dgemm32_fn)pynn_dgemm_ptr)(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta,
                                          c, &ldc);
    }
}

#endif
