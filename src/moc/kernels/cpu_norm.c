/* RMS normalisation on the CPU, forward and backward, one pass over each row.
 *
 * Built by moc/kernels/cpu_norm.py with the system C compiler, one library per dtype (-DREAL=float|double).
 * For rows x (N, D), an optional scale w (D,) and eps:
 *
 *   r = 1 / sqrt(mean(x^2) + eps)  (N,)     y = x r     out = y w   (out = y without w)
 *   dx = r (g w - y mean(g w y))            dw = sum over rows of g y
 *
 * Why hand-written: PyTorch's CPU rms_norm takes gradients through its decomposition (pow, mean, rsqrt,
 * two products: a dozen passes over (N, D), each with its own temporary), and its row reductions are slow
 * for the narrow rows of small models (D = 16: 4x a product's time). Single-threaded, in a fixed order:
 * the same result every run.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* sqrt on a float calls sqrtf */

#ifndef REAL
#define REAL float
#endif

typedef REAL real;
#define LANES (32 / (int)sizeof(real)) /* one 256-bit register: rows of 16 or 24 floats are whole vectors */
#include "cpu_common.h"

enum { ROWS = SUM_GROUP }; /* rows the backward takes together: their sums are folded into one vector */

/* acc[r] = a vector whose lanes sum to the dot product of rows a + r D and b + r D, for r < nb (the
   D % LANES trailing entries added to lane 0). */
static inline void row_dots(const real *restrict a, const real *restrict b, int nb, int64_t D, vec *acc) {
    const int64_t Dv = D / LANES * LANES;
    for (int r = 0; r < nb; r++) {
        const real *ar = a + r * D, *br = b + r * D;
        acc[r] = splat(0);
        for (int64_t j = 0; j < Dv; j += LANES) acc[r] += load(ar + j) * load(br + j);
        for (int64_t j = Dv; j < D; j++) acc[r][0] += ar[j] * br[j];
    }
}

static inline void store(real *p, vec v) { *(vec *)p = v; }

/* out (N, D) and rstd (N,) from x (N, D) and w (D; NULL: no scale). Row by row: folding blocks of rows'
   sums together (as the backward does) made the forward slower (8,192 x 16: 60 against 41 us). */
void rms_norm_forward(const real *restrict x, const real *restrict w, real *restrict out, real *restrict rstd,
                      int64_t N, int64_t D, double eps) {
    for (int64_t i = 0; i < N; i++) {
        const real *xi = x + i * D;
        real *oi = out + i * D;
        vec acc;
        row_dots(xi, xi, 1, D, &acc);
        const real r = 1 / sqrt(hsum(acc) / D + (real)eps);
        rstd[i] = r;
        if (w) /* plain loops: the compiler vectorises them at its own width (41 against 57 us with 8-wide vecs) */
            for (int64_t j = 0; j < D; j++) oi[j] = xi[j] * r * w[j];
        else
            for (int64_t j = 0; j < D; j++) oi[j] = xi[j] * r;
    }
}

enum { DW_BLOCK = 64 }; /* rows whose share of dw is summed in `real` before it joins a double total */

/* dx (N, D) and dw (D; only with w) from the gradient on the output g (N, D), x, w (NULL: no scale) and the
   forward's rstd. With s = sum(g w x) over a row, dx = r g w - x r^3 s / D. Returns 0, or 1 when out of
   memory. */
int rms_norm_backward(const real *restrict g, const real *restrict x, const real *restrict w,
                      const real *restrict rstd, real *restrict dx, real *restrict dw, int64_t N, int64_t D) {
    const int64_t per_double = sizeof(double) / sizeof(real), Dv = D / LANES * LANES;
    real *buf = get_scratch(D * per_double + (1 + ROWS) * D);
    if (!buf) return 1;
    double *total = (double *)buf; /* first: malloc's alignment suits a double */
    real *block = buf + D * per_double, *gw = block + D; /* the DW_BLOCK's dw; the ROWS rows' g w */
    if (w) memset(total, 0, D * sizeof(double)), memset(block, 0, D * sizeof(real));
    for (int64_t i0 = 0; i0 < N; i0 += ROWS) {
        const int nb = (int)(N - i0 < ROWS ? N - i0 : ROWS);
        const real *gb = g + i0 * D, *xb = x + i0 * D;
        if (w) {
            for (int r = 0; r < nb; r++) {
                const real *gi = gb + r * D;
                for (int64_t j = 0; j < Dv; j += LANES) store(gw + r * D + j, load(gi + j) * load(w + j));
                for (int64_t j = Dv; j < D; j++) gw[r * D + j] = gi[j] * w[j];
            }
            gb = gw;
        }
        vec acc[ROWS];
        real s[ROWS];
        row_dots(gb, xb, nb, D, acc);
        hsums(acc, nb, s);
        for (int r = 0; r < nb; r++) {
            const int64_t i = i0 + r;
            const real rr = rstd[i], c = rr * rr * rr * s[r] / D, *xi = xb + r * D, *gwi = gb + r * D;
            real *dxi = dx + i * D;
            const vec rv = splat(rr), cv = splat(c);
            for (int64_t j = 0; j < Dv; j += LANES) store(dxi + j, rv * load(gwi + j) - cv * load(xi + j));
            for (int64_t j = Dv; j < D; j++) dxi[j] = rr * gwi[j] - c * xi[j];
            if (!w) continue;
            const real *gi = g + i * D; /* dw += g y, y = x r */
            for (int64_t j = 0; j < Dv; j += LANES) store(block + j, load(block + j) + load(gi + j) * load(xi + j) * rv);
            for (int64_t j = Dv; j < D; j++) block[j] += gi[j] * xi[j] * rr;
            if ((i + 1) % DW_BLOCK == 0 || i == N - 1)
                for (int64_t j = 0; j < D; j++) total[j] += block[j], block[j] = 0;
        }
    }
    if (w)
        for (int64_t j = 0; j < D; j++) dw[j] = (real)total[j];
    return 0;
}
