/* The routed read on the CPU: each query attends to its tile's selected chapters, by index.
 *
 * Built by moc/kernels/cpu_read.py with the system C compiler, one library per (dtype, head size,
 * chapter size): -DREAL=float|double -DHD=<head size> -DTC=<chapter size, a power of two>. The maths
 * is that of moc/kernels/routed_read.py (its docstring names every symbol):
 *
 *   s[j, t] = a[d, j] * scale * (q_i . k[idx[d, j], t]) + b[d, j]
 *   out_i   = sum_{j, t} softmax(s)[j, t] * c[d, j] * v[idx[d, j], t]
 *
 * Why hand-written: with head sizes of 8-16 each score is a dot product shorter than a vector register,
 * and compiled PyTorch spends most of a token-routed read on sums across vector lanes. Here one vector
 * holds one chapter's TC tokens: each call first lays the keys and values out with the tokens last
 * ((U, Hkv, hd, TC), in per-thread scratch), so a chapter's TC scores are HD vector multiply-adds, and
 * its share of the output, of dq, dk and dv is HD more; lanes are summed only once per query and head.
 *
 * Arguments (all contiguous): q, out, dq, dout (D, Qt, H, hd); k, v, dk, dv (U, T, Hkv, hd); idx, w, dw
 * (D, n); lse (D, H, Qt). Query head h reads KV head h / (H / Hkv). Single-threaded, in a fixed order:
 * the same result every run.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#if !defined(HD) || !defined(TC)
#error "build with -DHD=<head size> -DTC=<chapter size>"
#endif

typedef REAL real;
#define LANES TC /* one chapter's TC tokens, one per lane */
#include "cpu_common.h" /* vectors, exp_v, get_scratch (here: the transposed keys and values) */

enum { MAX_N = 64 }; /* chapters one decision reads at most (the per-tile buffers below) */

/* The scaled raw products r = scale * (q . k[t]) of one chapter, from its transposed keys (HD, TC). */
static inline vec raw_scores(const real *restrict qh, const real *restrict ktc, real scale) {
    vec acc = splat(0);
    for (int e = 0; e < HD; e++) acc += qh[e] * load(ktc + e * TC);
    return acc * scale;
}

enum { KV = 0, V_ONLY = 1, LOGIT = 2 }; /* the chapter weightings, in routed_read.WEIGHTINGS order */

/* The chapter weighting's coefficients for weight w: logit scale a, logit bias b, value scale c. */
static inline void coefficients(int weighting, real w, real *a, real *b, real *c) {
    *a = weighting == KV ? w : 1;
    *b = weighting == LOGIT ? (real)log(w) : 0;
    *c = weighting == LOGIT ? 1 : w;
}

/* (U, T, Hkv, HD) -> (U, Hkv, HD, T), each chapter's tokens last, or back (token_last = 0). */
static void relayout(const real *restrict from, real *restrict to, int64_t U, int64_t kvh, int token_last) {
    for (int64_t u = 0; u < U; u++)
        for (int64_t t = 0; t < TC; t++)
            for (int64_t hh = 0; hh < kvh; hh++)
                for (int e = 0; e < HD; e++) {
                    const int64_t rows = ((u * TC + t) * kvh + hh) * HD + e;
                    const int64_t last = ((u * kvh + hh) * HD + e) * TC + t;
                    to[token_last ? last : rows] = from[token_last ? rows : last];
                }
}

/* out (D, Qt, H, hd), lse (D, H, Qt) from q, k, v (U, T, Hkv, hd), idx and w (D, n). Returns 0, 1 when
   out of memory, 2 when built for other sizes. */
int read_forward(const real *restrict q, const real *restrict k, const real *restrict v,
                 const int64_t *restrict idx, const real *restrict w, real *restrict out,
                 real *restrict lse, int64_t D, int64_t Qt, int64_t H, int64_t kvh, int64_t hd, int64_t T,
                 int64_t U, int64_t n, int64_t weighting, double scale_) {
    if (hd != HD || T != TC || n > MAX_N) return 2;
    const real scale = (real)scale_;
    const int64_t g = H / kvh, size = U * kvh * HD * TC;
    real *kt = get_scratch(2 * size);
    if (!kt) return 1;
    real *vt = kt + size;
    relayout(k, kt, U, kvh, 1);
    relayout(v, vt, U, kvh, 1);
    vec s[MAX_N];
    real cs[MAX_N];
    for (int64_t d = 0; d < D; d++) {
        const int64_t *idx_d = idx + d * n;
        real as[MAX_N], bs[MAX_N];
        for (int64_t j = 0; j < n; j++) coefficients((int)weighting, w[d * n + j], &as[j], &bs[j], &cs[j]);
        for (int64_t i = 0; i < Qt; i++) {
            for (int64_t h = 0; h < H; h++) {
                const int64_t hh = h / g, row = (d * Qt + i) * H + h;
                const real *qh = q + row * HD;
                vec m = splat(-INFINITY);
                for (int64_t j = 0; j < n; j++) {
                    const real *ktc = kt + (idx_d[j] * kvh + hh) * HD * TC;
                    s[j] = raw_scores(qh, ktc, scale) * as[j] + bs[j];
                    m = select_lt(m, s[j], s[j], m);
                }
                const real mx = hmax(m);
                real *oh = out + row * HD;
                if (mx == -INFINITY) { /* every key masked (weights of 0 under "logit"): read nothing */
                    for (int e = 0; e < HD; e++) oh[e] = 0;
                    lse[(d * H + h) * Qt + i] = -INFINITY;
                    continue;
                }
                vec total = splat(0), acc[HD];
                for (int e = 0; e < HD; e++) acc[e] = splat(0);
                for (int64_t j = 0; j < n; j++) {
                    const vec p = exp_v(s[j] - mx);
                    total += p;
                    const vec pc = p * cs[j];
                    const real *vtc = vt + (idx_d[j] * kvh + hh) * HD * TC;
                    for (int e = 0; e < HD; e++) acc[e] += pc * load(vtc + e * TC);
                }
                const real sum = hsum(total);
                for (int e = 0; e < HD; e++) oh[e] = hsum(acc[e]) / sum;
                lse[(d * H + h) * Qt + i] = mx + (real)log(sum);
            }
        }
    }
    return 0;
}

/* dq (D, Qt, H, hd), dk, dv (U, T, Hkv, hd) and dw (D, n) from the saved q, out, lse and k, v. */
int read_backward(const real *restrict dout, const real *restrict q, const real *restrict out,
                  const real *restrict lse, const real *restrict k, const real *restrict v,
                  const int64_t *restrict idx, const real *restrict w, real *restrict dq,
                  real *restrict dk, real *restrict dv, real *restrict dw, int64_t D, int64_t Qt,
                  int64_t H, int64_t kvh, int64_t hd, int64_t T, int64_t U, int64_t n, int64_t weighting,
                  double scale_) {
    if (hd != HD || T != TC || n > MAX_N) return 2;
    const real scale = (real)scale_;
    const int64_t g = H / kvh, size = U * kvh * HD * TC;
    real *kt = get_scratch(4 * size);
    if (!kt) return 1;
    real *vt = kt + size, *dkt = kt + 2 * size, *dvt = kt + 3 * size;
    memset(dkt, 0, 2 * size * sizeof(real));
    relayout(k, kt, U, kvh, 1);
    relayout(v, vt, U, kvh, 1);
    for (int64_t d = 0; d < D; d++) {
        const int64_t *idx_d = idx + d * n;
        /* per chapter: coefficients a, b, c of its weight, and their gradients summed over the tile */
        real as[MAX_N], bs[MAX_N], cs[MAX_N], da[MAX_N] = {0}, db[MAX_N] = {0}, dc[MAX_N] = {0};
        for (int64_t j = 0; j < n; j++) coefficients((int)weighting, w[d * n + j], &as[j], &bs[j], &cs[j]);
        for (int64_t i = 0; i < Qt; i++) {
            for (int64_t h = 0; h < H; h++) {
                const int64_t hh = h / g, row = (d * Qt + i) * H + h;
                const real *qh = q + row * HD, *doh = dout + row * HD, *oh = out + row * HD;
                real *dqh = dq + row * HD;
                const real l = lse[(d * H + h) * Qt + i];
                if (l == -INFINITY) { /* nothing was read: no gradient */
                    for (int e = 0; e < HD; e++) dqh[e] = 0;
                    continue;
                }
                real delta = 0; /* do . out */
                for (int e = 0; e < HD; e++) delta += doh[e] * oh[e];
                vec dq_acc[HD];
                for (int e = 0; e < HD; e++) dq_acc[e] = splat(0);
                for (int64_t j = 0; j < n; j++) {
                    const int64_t at = (idx_d[j] * kvh + hh) * HD * TC;
                    const vec r = raw_scores(qh, kt + at, scale);
                    const vec p = exp_v(r * as[j] + bs[j] - l);
                    vec dp = splat(0); /* d loss / d (p c) = do . v[t] */
                    for (int e = 0; e < HD; e++) dp += doh[e] * load(vt + at + e * TC);
                    const vec ds = p * (dp * cs[j] - delta); /* d loss / d s: the softmax backward */
                    dc[j] += hsum(dp * p);
                    db[j] += hsum(ds);
                    da[j] += hsum(ds * r);
                    const vec dr = ds * (as[j] * scale), pc = p * cs[j];
                    for (int e = 0; e < HD; e++) {
                        dq_acc[e] += dr * load(kt + at + e * TC);
                        *(vec *)(dkt + at + e * TC) += dr * qh[e];
                        *(vec *)(dvt + at + e * TC) += pc * doh[e];
                    }
                }
                for (int e = 0; e < HD; e++) dqh[e] = hsum(dq_acc[e]);
            }
        }
        for (int64_t j = 0; j < n; j++)
            dw[d * n + j] = weighting == KV       ? da[j] + dc[j]
                            : weighting == V_ONLY ? dc[j]
                                                  : db[j] / w[d * n + j];
    }
    relayout(dkt, dk, U, kvh, 0);
    relayout(dvt, dv, U, kvh, 0);
    return 0;
}
