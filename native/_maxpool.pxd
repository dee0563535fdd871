# Max pooling's winner rules (_maxpool.h), shared by pool.pyx (maxpool2d_forward), conv.pyx
# (the conv-pool pair's bands) and infer.pyx (the inference plans' values-only pooling).
cdef extern from "_maxpool.h":
    void pynn_max_update_f(const float* px, float* best, int* arg, Py_ssize_t C,
                           int idx) noexcept nogil
    void pynn_max_update_d(const double* px, double* best, int* arg, Py_ssize_t C,
                           int idx) noexcept nogil
    void pynn_infer_max_f(const float* x, Py_ssize_t wc, Py_ssize_t hn, Py_ssize_t wn,
                          float* y, Py_ssize_t C) noexcept nogil
    void pynn_window_max_f(const float* x, Py_ssize_t wc, Py_ssize_t hn, Py_ssize_t wn,
                           Py_ssize_t C, int idx0, int idx_row, float* y,
                           int* arg) noexcept nogil
