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
 * holds one chapter's TC tokens: the keys and values come with the tokens last (each chapter's TC tokens
 * adjacent in memory, as moc/model/memory.py projects them on the CPU), so a chapter's TC scores are HD
 * vector multiply-adds, and its share of the output, of dq, dk and dv is HD more; lanes are summed once
 * per query and head, several sums folded together (hsums).
 *
 * Arguments: q, out, dq, dout (D, Qt, H, hd) contiguous; k, v, dk, dv (U, T, Hkv, hd) with the tokens
 * adjacent (stride 1) and the other strides given (dk, dv: those of k, v; zeroed by the caller); idx, w,
 * dw (D, n) contiguous; lse (D, H, Qt). Query head h reads KV head h / (H / Hkv). Single-threaded, in a
 * fixed order: the same result every run.
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
#include "cpu_common.h" /* vectors, exp_v, hsums */

enum { MAX_N = 64 }; /* chapters one decision reads at most (the per-tile buffers below) */

/* The strides of keys or values (U, T, Hkv, hd) with tokens adjacent: chapter, head, element. */
typedef struct {
    int64_t chapter, head, element;
} strides;

/* The scaled raw products r = scale * (q . k[t]) of one chapter head's keys, element e's TC tokens at
   ktc + e * se. */
static inline vec raw_scores(const real *restrict qh, const real *restrict ktc, int64_t se, real scale) {
    vec acc = splat(0);
    for (int e = 0; e < HD; e++) acc += qh[e] * load(ktc + e * se);
    return acc * scale;
}

enum { KV = 0, V_ONLY = 1, LOGIT = 2 }; /* the chapter weightings, in routed_read.WEIGHTINGS order */

/* The chapter weighting's coefficients for weight w: logit scale a, logit bias b, value scale c. */
static inline void coefficients(int weighting, real w, real *a, real *b, real *c) {
    *a = weighting == KV ? w : 1;
    *b = weighting == LOGIT ? (real)log(w) : 0;
    *c = weighting == LOGIT ? 1 : w;
}

/* out (D, Qt, H, hd), lse (D, H, Qt) from q, k, v (U, T, Hkv, hd), idx and w (D, n). Returns 0, or 2
   when built for other sizes. */
int read_forward(const real *restrict q, const real *restrict k, const real *restrict v,
                 const int64_t *restrict idx, const real *restrict w, real *restrict out,
                 real *restrict lse, int64_t D, int64_t Qt, int64_t H, int64_t kvh, int64_t hd, int64_t T,
                 int64_t U, int64_t n, int64_t weighting, double scale_, strides ks, strides vs) {
    if (hd != HD || T != TC || n > MAX_N) return 2;
    const real scale = (real)scale_;
    const int64_t g = H / kvh;
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
                    const real *ktc = k + idx_d[j] * ks.chapter + hh * ks.head;
                    s[j] = raw_scores(qh, ktc, ks.element, scale) * as[j] + bs[j];
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
                    const real *vtc = v + idx_d[j] * vs.chapter + hh * vs.head;
                    for (int e = 0; e < HD; e++) acc[e] += pc * load(vtc + e * vs.element);
                }
                const real sum = hsum(total);
                real o[HD];
                hsums(acc, HD, o);
                for (int e = 0; e < HD; e++) oh[e] = o[e] / sum;
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
                  double scale_, strides ks, strides vs) {
    if (hd != HD || T != TC || n > MAX_N) return 2;
    const real scale = (real)scale_;
    const int64_t g = H / kvh;
    for (int64_t d = 0; d < D; d++) {
        const int64_t *idx_d = idx + d * n;
        /* per chapter: coefficients a, b, c of its weight, and their gradients summed over the tile */
        real as[MAX_N], bs[MAX_N], cs[MAX_N];
        vec dabc[3 * MAX_N]; /* per chapter j: da, db, dc (below) in lanes, summed across them at the end */
        for (int64_t j = 0; j < 3 * n; j++) dabc[j] = splat(0);
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
                    const int64_t at_k = idx_d[j] * ks.chapter + hh * ks.head;
                    const int64_t at_v = idx_d[j] * vs.chapter + hh * vs.head;
                    const vec r = raw_scores(qh, k + at_k, ks.element, scale);
                    const vec p = exp_v(r * as[j] + bs[j] - l);
                    vec dp = splat(0); /* d loss / d (p c) = do . v[t] */
                    for (int e = 0; e < HD; e++) dp += doh[e] * load(v + at_v + e * vs.element);
                    const vec ds = p * (dp * cs[j] - delta); /* d loss / d s: the softmax backward */
                    dabc[3 * j] += ds * r;
                    dabc[3 * j + 1] += ds;
                    dabc[3 * j + 2] += dp * p;
                    const vec dr = ds * (as[j] * scale), pc = p * cs[j];
                    for (int e = 0; e < HD; e++) {
                        dq_acc[e] += dr * load(k + at_k + e * ks.element);
                        *(vec *)(dk + at_k + e * ks.element) += dr * qh[e];
                        *(vec *)(dv + at_v + e * vs.element) += pc * doh[e];
                    }
                }
                hsums(dq_acc, HD, dqh);
            }
        }
        real sums[3 * MAX_N]; /* the gradients on each chapter's coefficients a, b, c */
        hsums(dabc, (int)(3 * n), sums);
        for (int64_t j = 0; j < n; j++) {
            const real da = sums[3 * j], db = sums[3 * j + 1], dc = sums[3 * j + 2];
            dw[d * n + j] = weighting == KV ? da + dc : weighting == V_ONLY ? dc : db / w[d * n + j];
        }
    }
    return 0;
}
