/* Post-training int8 kernels (issue 18): the twin of native/quant.pyx.
 *
 * Legend: N batch, K input features, U output units. One work-item per element / output.
 * int8_dense_forward: acc = sat_int32(sum_k xq[n,k] wq[u,k] - x_zp sum_k wq[u,k] + bias[u])
 * (the dot product in int, the correction in long), yq = clamp(rint((float)acc * mult[u]) +
 * y_zp, lo, 255): the CPU's float32 roundings, so the results are bit-identical. The dot is
 * the portable loop; a device with cl_khr_integer_dot_product could take dot_4x8packed_us_int
 * (not needed on the devices tested: PoCL's CPU vectorizes this loop).
 */
#include "common.h"

uchar requantize(float v, float zero_point, float lo)
{
    float r = rint(v) + zero_point;
    r = r < lo ? lo : r;
    r = r > 255.0f ? 255.0f : r;
    return (uchar)r;
}

__kernel void quantize_forward(__global const float *x, __global uchar *q, const int n,
                               const float scale, const float zero_point)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    q[i] = requantize(x[i] / scale, zero_point, 0.0f);
}

__kernel void dequantize_forward(__global const uchar *q, __global float *y, const int n,
                                 const float scale, const float zero_point)
{
    const int i = get_global_id(0);
    GUARD(i, n);
    y[i] = ((float)q[i] - zero_point) * scale;
}

__kernel void int8_dense_forward(__global const uchar *xq, __global const char *wq,
                                 __global const int *bias, __global const float *mult,
                                 __global uchar *yq, const int n, const int k, const int units,
                                 const int use_bias, const int x_zero_point,
                                 const float y_zero_point, const float lo)
{
    const int t = get_global_id(0);
    GUARD(t, n * units);
    const int r = t / units, u = t % units;
    __global const uchar *xr = xq + (size_t)r * k;
    __global const char *wr = wq + (size_t)u * k;
    int dot = 0, wsum = 0;
    for (int j = 0; j < k; ++j) {
        dot += (int)xr[j] * (int)wr[j];
        wsum += (int)wr[j];
    }
    long acc = (long)dot - (long)x_zero_point * (long)wsum + (use_bias ? (long)bias[u] : 0L);
    acc = acc < (long)INT_MIN ? (long)INT_MIN : (acc > (long)INT_MAX ? (long)INT_MAX : acc);
    yq[t] = requantize((float)(int)acc * mult[u], y_zero_point, lo);
}
