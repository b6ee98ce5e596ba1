/* What moc's CPU kernels share: vectors (GNU C vector extensions, so any -march vectorises them), a
 * vectorised exp and per-thread scratch memory.
 *
 * The including file defines `real` (float or double) and LANES (a power of two) first; with FAST_EXP
 * (float builds) exp_v is a vectorised polynomial, otherwise libm's exp lane by lane.
 */
#ifndef MOC_CPU_COMMON_H
#define MOC_CPU_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* LANES values of `real`, aligned like a scalar: loads and stores at any element are fine. */
typedef real vec __attribute__((vector_size(LANES * sizeof(real)), aligned(sizeof(real))));
#define MASK_OF(x) __typeof__((x) < (x))

static inline vec splat(real x) { return (vec){0} + x; }

static inline vec select_lt(vec x, vec y, vec if_lt, vec otherwise) { /* x < y ? if_lt : otherwise */
    MASK_OF(x) m = x < y;
    return (vec)((m & (MASK_OF(x))if_lt) | (~m & (MASK_OF(x))otherwise));
}

static inline real hsum(vec x) {
    real s = 0;
    for (int t = 0; t < LANES; t++) s += x[t];
    return s;
}

/* The shuffle masks of a transposed lane sum's steps (fold below), one pair per step's group width g =
   LANES, LANES / 2, ..., 2, filled once when the library loads. */
typedef __typeof__((vec){0} < (vec){0}) lane_index;
static lane_index fold_lo[32], fold_hi[32];

__attribute__((constructor)) static void fill_fold_masks(void) {
    for (int g = LANES, step = 0; g > 1; g /= 2, step++)
        for (int i = 0; i < LANES; i++) {
            const int j = i % (LANES / 2), r = j / (g / 2), at = j % (g / 2);
            fold_lo[step][i] = (i >= LANES / 2 ? LANES : 0) + r * g + at;
            fold_hi[step][i] = fold_lo[step][i] + g / 2;
        }
}

/* One step of a transposed lane sum: a and b each hold LANES / g partial sums of g adjacent lanes (g =
   LANES >> step); the result holds a's then b's, of g / 2 lanes each. */
static inline vec fold(vec a, vec b, int step) {
    return __builtin_shuffle(a, b, fold_lo[step]) + __builtin_shuffle(a, b, fold_hi[step]);
}

enum { SUM_GROUP = LANES < 8 ? LANES : 8 }; /* vectors summed together by hsums */

/* out[i] = the sum of x[i]'s lanes for i < n (x is overwritten). Groups of SUM_GROUP vectors are folded
   pairwise into one, then that one into itself: about n + log2(LANES) vector adds and twice as many
   shuffles, where hsum takes n (LANES - 1) dependent scalar adds. The order of the additions is a tree's,
   not hsum's left to right. */
static inline void hsums(vec *x, int n, real *out) {
    for (int first = 0; first < n; first += SUM_GROUP) {
        int count = 1; /* a power of two */
        while (count < SUM_GROUP && count < n - first) count *= 2;
        vec y[SUM_GROUP];
        for (int i = 0; i < count; i++) y[i] = first + i < n ? x[first + i] : splat(0);
        int step = 0;
        for (int left = count; left > 1; left /= 2, step++)
            for (int i = 0; i < left / 2; i++) y[i] = fold(y[2 * i], y[2 * i + 1], step);
        for (; (LANES >> step) > 1; step++) y[0] = fold(y[0], y[0], step); /* down to sums of 1 lane */
        for (int i = 0; i < count && first + i < n; i++) out[first + i] = y[0][i];
    }
}

static inline real hmax(vec x) {
    real m = x[0];
    for (int t = 1; t < LANES; t++) m = x[t] > m ? x[t] : m;
    return m;
}

#ifdef FAST_EXP
typedef int32_t ivec __attribute__((vector_size(LANES * sizeof(int32_t))));
/* exp of every lane, vectorised (libm's expf is one call per value): Cephes' single-precision
   polynomial, within 1 ulp of the exact value on [-87, 0] (tests/kernels/test_cpu_common.py checks every
   256th float there); below -87 (and -inf) it gives 0, NaN stays NaN. */
static inline vec exp_v(vec x0) {
    const vec lo = splat(-87.0f), hi = splat(88.0f);
    vec x = select_lt(x0, lo, lo, x0);
    x = select_lt(hi, x, hi, x);
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick; r = x - n ln 2 in two parts */
    const vec n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const vec r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    vec p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23; /* 2^n */
    return select_lt(x0, lo, splat(0), p * (vec)bits);
}
#else
static inline vec exp_v(vec x) { /* float64, the reference dtype: libm's exp */
    for (int t = 0; t < LANES; t++) x[t] = exp(x[t]);
    return x;
}
#endif

static inline vec load(const real *p) { return *(const vec *)p; }

/* Scratch kept per thread between calls (NULL when out of memory): memory freshly taken from the system
   costs a page fault per 4 KiB on first touch, more than a kernel's own work. */
static _Thread_local real *scratch;
static _Thread_local int64_t scratch_len;

static real *get_scratch(int64_t len) {
    if (len > scratch_len) {
        free(scratch);
        scratch = malloc(len * sizeof(real));
        scratch_len = scratch ? len : 0;
    }
    return scratch;
}

#endif
