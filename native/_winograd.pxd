# Winograd F(2x2, 3x3) and F(4x4, 3x3) (_winograd.h), shared by conv.pyx (the public ops)
# and infer.pyx (the inference plans' Conv2DWinograd, which must give the ops' bits).
cdef extern from "_winograd.h":
    void pynn_wino_input_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                           Py_ssize_t left, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t C,
                           Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t t0, Py_ssize_t nt,
                           Py_ssize_t ks, Py_ssize_t rs, const float* zeros,
                           float* V) noexcept nogil
    void pynn_wino_output_f(const float* M, Py_ssize_t ks, Py_ssize_t rs, Py_ssize_t F,
                            const float* bias,
                            Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t HO, Py_ssize_t WO,
                            Py_ssize_t t0, Py_ssize_t nt, float* z) noexcept nogil
    void pynn_wino_kernel_f(const float* kernel, Py_ssize_t C, Py_ssize_t F,
                            float* U) noexcept nogil
    void pynn_wino_gemm_f(const float* V, Py_ssize_t ksv, const float* Up, float* M,
                          Py_ssize_t ksm, Py_ssize_t rsm, Py_ssize_t nt, Py_ssize_t C,
                          Py_ssize_t F, Py_ssize_t nc, const Py_ssize_t* roff,
                          int nk) noexcept nogil
    void pynn_wino_dout_f(const float* dz, Py_ssize_t sn, Py_ssize_t sh, Py_ssize_t HO,
                          Py_ssize_t WO, Py_ssize_t F, Py_ssize_t TH, Py_ssize_t TW,
                          Py_ssize_t t0, Py_ssize_t nt, Py_ssize_t ks, Py_ssize_t rs,
                          const float* zeros, float* W) noexcept nogil
    void pynn_wino_wgrad_gemm_f(const float* V, Py_ssize_t ksv, Py_ssize_t rsv,
                                const float* W, Py_ssize_t ksw, Py_ssize_t rsw, float* dU,
                                Py_ssize_t nt, Py_ssize_t C, Py_ssize_t F, Py_ssize_t nc,
                                const Py_ssize_t* roff, int accum, int nk) noexcept nogil
    void pynn_wino_kernel_grad_f(const float* part, Py_ssize_t S, Py_ssize_t C, Py_ssize_t F,
                                 Py_ssize_t c0, Py_ssize_t c1, float* dkernel) noexcept nogil
    void pynn_wino4_input_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                            Py_ssize_t left, Py_ssize_t HP, Py_ssize_t WP, Py_ssize_t C,
                            Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t t0, Py_ssize_t nt,
                            Py_ssize_t ks, Py_ssize_t rs, const float* zeros,
                            float* V) noexcept nogil
    void pynn_wino4_output_f(float* M, Py_ssize_t ks, Py_ssize_t rs, Py_ssize_t F,
                             const float* bias,
                             Py_ssize_t TH, Py_ssize_t TW, Py_ssize_t HO, Py_ssize_t WO,
                             Py_ssize_t t0, Py_ssize_t nt, float* z) noexcept nogil
    void pynn_wino4_kernel_f(const float* kernel, Py_ssize_t C, Py_ssize_t F,
                             float* U) noexcept nogil
    void pynn_wino4_dout_f(const float* dz, Py_ssize_t sn, Py_ssize_t sh, Py_ssize_t HO,
                           Py_ssize_t WO, Py_ssize_t F, Py_ssize_t TH, Py_ssize_t TW,
                           Py_ssize_t t0, Py_ssize_t nt, Py_ssize_t ks, Py_ssize_t rs,
                           const float* zeros, float* W) noexcept nogil
    void pynn_wino4_kernel_grad_f(const float* part, Py_ssize_t S, Py_ssize_t C, Py_ssize_t F,
                                  Py_ssize_t c0, Py_ssize_t c1, float* dkernel) noexcept nogil
