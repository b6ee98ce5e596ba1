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

static inline real hmax(vec x) {
    real m = x[0];
    for (int t = 1; t < LANES; t++) m = x[t] > m ? x[t] : m;
    return m;
}

#ifdef FAST_EXP
typedef int32_t ivec __attribute__((vector_size(LANES * sizeof(int32_t))));
/* exp of every lane, vectorised (libm's expf is one call per value): Cephes' single-precision
   polynomial, within 1 ulp of the exact value on [-87, 0] (checked on every 64th float there); below
   -87 (and -inf) it gives 0, NaN stays NaN. */
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
