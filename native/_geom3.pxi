# Geom3: one 3-D convolution's geometry (native/conv3d.pyx's legend), included by
# native/conv3d.pyx and native/convlstm.pyx, which calls conv3d's direct forward through a
# capsule with a pointer to it: one definition keeps the two layouts the same.

cdef struct Geom3:
    Py_ssize_t N, D, H, W, C, KD, KH, KW, F, G, CG, FG, SD, SH, SW, DD, DH, DW
    Py_ssize_t PF, PT, PL, DO, HO, WO, K
    Py_ssize_t DP, HP, WP   # the zero-padded input the direct path reads
