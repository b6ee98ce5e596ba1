/* The router head on the CPU: softmax, top-k and the router's losses over a batch of chapter scores.
 *
 * Built by moc/kernels/cpu_router.py with the system C compiler, one library per dtype (-DREAL=float|
 * double). The maths and every output are those of moc/kernels/router_head.py (head_forward_torch and
 * head_backward_torch), for N decisions' scores l (N, C) (which the forward can make itself from the
 * router's linear layer, never writing them out) over S shared chapters and R = C - S routed ones:
 *
 *   p       = softmax(l[S:])                         probs (N, R)
 *   picks   top-k of p, ties to the lowest index     top_p, top_i (N, K)
 *   lse_r   = logsumexp(l[S:]), lse = logsumexp(l)   routed_share = exp(lse_r - lse) (N,)
 *                                                    shared_p = exp(l[:S] - lse) (N, S)
 *   load balance = R sum_i f_i P_i, z-loss = mean lse^2, entropy = mean (lse_r - <p, l[S:]>)
 *
 * over the decisions with w = 1 (f_i: share of the top-k picks, P_i: mean probability; counts (R,) are
 * the picks per chapter). Why hand-written: with thousands of decisions and hundreds of chapters, eager
 * PyTorch runs these as a dozen passes over (N x R), each with its own temporary; here a row's work stays
 * in L1, and backward takes each row of the gradient straight to the linear layer's gradients (1.9x
 * faster eager at 512 chapters, 1.3x compiled; moc/model/router.py says where it runs). Single-threaded,
 * in a fixed order: the same result every run.
 */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <tgmath.h> /* exp, log on a float call expf, logf */

#ifndef REAL
#define REAL float
#endif

typedef REAL real;
#define LANES (64 / (int)sizeof(real)) /* one 512-bit register (two 256-bit ones where that is all) */
#include "cpu_common.h" /* vectors, exp_v, get_scratch (here: a padded row and the probability sums) */
#define LOWEST (sizeof(real) == sizeof(float) ? -FLT_MAX : -DBL_MAX) /* the most negative finite real */

/* Independent accumulators for a row's maximum: one compare-and-select chain is bound by its latency. */
enum { CHAINS = 4 };

/* Whether the sizes are possible; chapter ids are held in `real` lanes, exact below 2^24 in float. */
static inline int sizes_ok(int64_t R, int64_t S, int64_t K) {
    return S >= 0 && K >= 1 && K <= R && R < ((int64_t)1 << (sizeof(real) == sizeof(float) ? 24 : 53));
}

/* Rows are padded to whole groups of CHAINS vectors. */
static inline int64_t padded(int64_t n) { return (n + CHAINS * LANES - 1) / (CHAINS * LANES) * (CHAINS * LANES); }

static inline vec pick(MASK_OF(splat(0)) m, vec if_true, vec otherwise) {
    return (vec)((m & (MASK_OF(if_true))if_true) | (~m & (MASK_OF(if_true))otherwise));
}

/* Whether any lane of x is >= the same lane of y (NaN: no). */
static inline int any_ge(vec x, vec y) {
#if defined(__AVX512F__) && defined(__x86_64__)
    if (sizeof(vec) == 64 && sizeof(real) == 4) return _mm512_cmp_ps_mask((__m512)x, (__m512)y, _CMP_GE_OQ) != 0;
    if (sizeof(vec) == 64 && sizeof(real) == 8) return _mm512_cmp_pd_mask((__m512d)x, (__m512d)y, _CMP_GE_OQ) != 0;
#endif
    int any = 0;
    for (int t = 0; t < LANES; t++) any |= x[t] >= y[t];
    return any;
}

/* The largest entry of row (len a whole number of CHAINS vectors, entries not NaN) and its lowest index. */
static inline int64_t arg_max(const real *row, int64_t len, real *value) {
    vec best[CHAINS], at[CHAINS]; /* per chain and lane: the largest value seen, and the vector's start */
    for (int c = 0; c < CHAINS; c++) best[c] = splat(-INFINITY), at[c] = splat(0);
    for (int64_t i = 0; i < len; i += CHAINS * LANES) /* strict >: each lane keeps its first maximum */
        for (int c = 0; c < CHAINS; c++) {
            const vec x = load(row + i + c * LANES);
            at[c] = select_lt(best[c], x, splat((real)(i + c * LANES)), at[c]);
            best[c] = select_lt(best[c], x, x, best[c]);
        }
    for (int c = 1; c < CHAINS; c++) { /* the larger value; of equal ones, the lower index */
        MASK_OF(best[0]) take = (best[0] < best[c]) | ((best[0] == best[c]) & (at[c] < at[0]));
        best[0] = pick(take, best[c], best[0]);
        at[0] = pick(take, at[c], at[0]);
    }
    const real m = hmax(best[0]);
    int64_t i = 0; /* stays 0 only for a row with no number above -inf */
    for (int t = 0, found = 0; t < LANES; t++) {
        const int64_t lane_i = (int64_t)at[0][t] + t;
        if (best[0][t] == m && (!found || lane_i < i)) i = lane_i, found = 1;
    }
    *value = row[i];
    return i;
}

/* The k largest entries of a row of probabilities p (len R, entries >= 0 or all NaN) into top_p, top_i,
   largest first, ties to the lowest index, given lane_max: each vector lane's maximum over the row's
   vectors. For K <= LANES the k-th largest lane maximum is a floor that only a few entries reach (at least
   K: the lanes' maxima themselves), so one pass compares every entry with it and sorts the few that pass
   into the picks; larger K take K arg-max passes over a padded copy. */
static void top_k(const real *restrict p, int64_t R, vec lane_max, int64_t K, real *restrict row,
                  real *restrict top_p, int64_t *restrict top_i) {
    for (int64_t k = 0; k < K; k++) top_p[k] = -1, top_i[k] = R; /* below every probability */
    if (K <= LANES) {
        real floor = -1; /* the K-th largest lane maximum (NaN lanes never count) */
        for (int64_t k = 0; k < K; k++) {
            int t_best = -1;
            for (int t = 0; t < LANES; t++)
                if (lane_max[t] >= 0 && (t_best < 0 || lane_max[t] > lane_max[t_best])) t_best = t;
            if (t_best < 0) break;
            floor = lane_max[t_best];
            lane_max[t_best] = -1;
        }
        const vec fv = splat(floor);
        for (int64_t j = 0; j < R; j += LANES) {
            vec x;
            if (j + LANES <= R) x = load(p + j);
            else {
                x = splat(-1);
                for (int64_t t = 0; t < R - j; t++) x[t] = p[j + t];
            }
            if (!any_ge(x, fv)) continue;
            for (int t = 0; t < LANES; t++) { /* in index order: an equal later entry ranks below */
                if (!(x[t] >= floor) || !(x[t] > top_p[K - 1])) continue;
                int64_t at = K - 1;
                for (; at > 0 && x[t] > top_p[at - 1]; at--) top_p[at] = top_p[at - 1], top_i[at] = top_i[at - 1];
                top_p[at] = x[t], top_i[at] = j + t;
            }
        }
    } else {
        const int64_t Rv = padded(R);
        memcpy(row, p, R * sizeof(real));
        for (int64_t j = R; j < Rv; j++) row[j] = -1; /* never picked: probabilities are >= 0 */
        for (int64_t k = 0; k < K; k++) {
            real value;
            const int64_t i = arg_max(row, Rv, &value);
            if (i >= R || !(value >= 0)) break;
            top_p[k] = value, top_i[k] = i;
            row[i] = -1;
        }
    }
    for (int64_t k = 0; k < K; k++) /* a row of NaN (a diverged run): distinct real ids, NaN kept */
        if (!(top_p[k] >= 0)) top_p[k] = p[k], top_i[k] = k;
}

enum { ROWS = 4 }; /* decisions scored together: each vector of W^T loaded once for all of them */

/* The scores plus bias of decisions d0 .. d0 + nb - 1: routed ones into rows (nb rows of Rv, padded with
   the most negative finite value: exp gives 0, times it 0), shared ones into shared (nb rows of S). Read
   from scores (N, C) where D is 0, else made as x W^T from x (N, D) and wt = W^T (D rows of S + Rv, zero
   past C). */
static void score_rows(const real *restrict scores, const real *restrict x, const real *restrict wt,
                       const real *restrict bias, int64_t d0, int nb, int64_t C, int64_t S, int64_t D,
                       real *restrict rows, real *restrict shared) {
    const int64_t R = C - S, Rv = padded(R), ld = S + Rv;
    if (D == 0) {
        for (int r = 0; r < nb; r++) {
            const real *l = scores + (d0 + r) * C;
            real *row = rows + r * Rv;
            for (int64_t j = 0; j < R; j++) row[j] = l[S + j] + (bias ? bias[S + j] : 0);
            for (int64_t s = 0; s < S; s++) shared[r * S + s] = l[s] + (bias ? bias[s] : 0);
        }
    } else {
        const real *xb = x + d0 * D;
        for (int64_t j = 0; j < Rv; j += LANES) {
            vec acc[ROWS];
            const vec b = bias && j + LANES <= R ? load(bias + S + j) : splat(0);
            for (int r = 0; r < ROWS; r++) acc[r] = b;
            if (bias && j + LANES > R)
                for (int r = 0; r < ROWS; r++)
                    for (int64_t t = 0; t < R - j; t++) acc[r][t] = bias[S + j + t];
            for (int64_t e = 0; e < D; e++) {
                const vec wv = load(wt + e * ld + S + j);
                for (int r = 0; r < ROWS; r++) /* rows past nb: never stored */
                    acc[r] += xb[(r < nb ? r : 0) * D + e] * wv;
            }
            for (int r = 0; r < nb; r++) *(vec *)(rows + r * Rv + j) = acc[r];
        }
        for (int r = 0; r < nb; r++)
            for (int64_t s = 0; s < S; s++) {
                real acc = bias ? bias[s] : 0;
                for (int64_t e = 0; e < D; e++) acc += xb[r * D + e] * wt[e * ld + s];
                shared[r * S + s] = acc;
            }
    }
    for (int r = 0; r < nb; r++)
        for (int64_t j = R; j < Rv; j++) rows[r * Rv + j] = (real)LOWEST;
}

/* probs, top_p, top_i, lse_r/lse/routed_share (per decision), shared_p, counts, and the load balance,
   z-loss and entropy from the scores plus bias (C; NULL: none) and w (N,). The scores are given (N, C)
   where D is 0, else made here from the router's input x (N, D) and weight W (C, D): never written out.
   Returns 0, 1 when out of memory, 2 for bad sizes. */
int router_forward(const real *restrict scores, const real *restrict x, const real *restrict W,
                   const real *restrict bias, const real *restrict w, real *restrict probs,
                   real *restrict top_p, int64_t *restrict top_i, real *restrict lse_out,
                   real *restrict routed_share, real *restrict shared_p, real *restrict counts,
                   real *restrict balance, real *restrict z_loss, real *restrict entropy_out, int64_t N,
                   int64_t C, int64_t S, int64_t K, int64_t D) {
    const int64_t R = C - S, Rv = padded(R), ld = S + Rv;
    if (!sizes_ok(R, S, K) || D < 0) return 2;
    real *rows = get_scratch(ROWS * (Rv + S) + Rv + D * ld);
    if (!rows) return 1;
    real *shared_scores = rows + ROWS * Rv, *p_sum = shared_scores + ROWS * S; /* p_sum: p over valid decisions */
    real *wt = p_sum + Rv;
    if (D) /* W transposed, so that a vector of it holds LANES chapters' weights of one input dim */
        for (int64_t e = 0; e < D; e++)
            for (int64_t c = 0; c < ld; c++) wt[e * ld + c] = c < C ? W[c * D + e] : 0;
    memset(p_sum, 0, Rv * sizeof(real));
    memset(counts, 0, R * sizeof(real));
    double n = 0, z = 0, entropy = 0;
    for (int64_t d = 0; d < N; d++) {
        const int r = (int)(d % ROWS);
        if (r == 0) /* the next ROWS decisions' scores */
            score_rows(scores, x, wt, bias, d, (int)(N - d < ROWS ? N - d : ROWS), C, S, D, rows, shared_scores);
        real *row = rows + r * Rv;
        const real *ls = shared_scores + r * S;
        vec m[CHAINS]; /* the routed scores' maximum */
        for (int c = 0; c < CHAINS; c++) m[c] = splat(-INFINITY);
        for (int64_t j = 0; j < Rv; j += CHAINS * LANES)
            for (int c = 0; c < CHAINS; c++) {
                const vec xv = load(row + j + c * LANES);
                m[c] = select_lt(m[c], xv, xv, m[c]);
            }
        for (int c = 1; c < CHAINS; c++) m[0] = select_lt(m[0], m[c], m[c], m[0]);
        const real mx = hmax(m[0]);
        vec total = splat(0), dot = splat(0);
        for (int64_t j = 0; j < Rv; j += LANES) {
            const vec xv = load(row + j), e = exp_v(xv - mx);
            total += e;
            dot += e * xv;
            *(vec *)(row + j) = e;
        }
        const real sum = hsum(total), lse_r = mx + log(sum);
        /* the shared chapters' logsumexp lse_s, then lse = logaddexp(lse_r, lse_s) */
        const real ms = S ? ls[0] : -INFINITY;
        real lse_s = ms, ms_max = ms;
        for (int64_t s = 1; s < S; s++) ms_max = ls[s] > ms_max ? ls[s] : ms_max;
        if (S > 1) {
            real sum_s = 0;
            for (int64_t s = 0; s < S; s++) sum_s += exp(ls[s] - ms_max);
            lse_s = ms_max + log(sum_s);
        }
        real lse_all = lse_r, share = 1, shared = 0; /* exp(lse_r - lse), exp(lse_s - lse): the masses */
        if (S) {
            const real hi = lse_r > lse_s ? lse_r : lse_s, e = exp(-fabs(lse_r - lse_s)); /* e <= 1 */
            lse_all = hi + log1p(e);
            share = lse_r > lse_s ? 1 / (1 + e) : e / (1 + e);
            shared = lse_r > lse_s ? e / (1 + e) : 1 / (1 + e);
        }
        const real wd = w[d];
        const real inv = 1 / sum;
        real *p = probs + d * R;
        vec lane_max = splat(-1);
        for (int64_t j = 0; j < Rv; j += LANES) {
            const vec pj = load(row + j) * inv;
            if (j + LANES <= R) *(vec *)(p + j) = pj;
            else
                for (int64_t t = 0; t < R - j; t++) p[j + t] = pj[t];
            if (wd != 0) *(vec *)(p_sum + j) += pj * wd;
            lane_max = select_lt(lane_max, pj, pj, lane_max);
        }
        lse_out[d] = lse_all;
        routed_share[d] = share;
        for (int64_t s = 0; s < S; s++) shared_p[d * S + s] = S == 1 ? shared : exp(ls[s] - lse_all);
        top_k(p, R, lane_max, K, row, top_p + d * K, top_i + d * K);
        for (int64_t k = 0; k < K; k++) counts[top_i[d * K + k]] += wd;
        n += wd;
        z += wd * (double)lse_all * lse_all;
        entropy += wd * ((double)lse_r - hsum(dot) / sum);
    }
    n = n > 1 ? n : 1;
    double sum_fp = 0;
    for (int64_t j = 0; j < R; j++) sum_fp += (double)counts[j] * p_sum[j];
    *balance = (real)(R * sum_fp / (n * K * n));
    *z_loss = (real)(z / n);
    *entropy_out = (real)(entropy / n);
    return 0;
}

enum { BLOCK = 4 }; /* decisions taken to the linear layer together: each row of W and dW read once */

/* dx = g W (nb x D), dW += g^T x, db += sum of g's rows, for nb <= BLOCK decisions' gradients on the
   scores g (nb rows of C, ld apart) and their inputs x (nb x D). */
static void to_linear(const real *restrict g, int64_t ld, int nb, const real *restrict x,
                      const real *restrict W, real *restrict dx, real *restrict dW, real *restrict db,
                      int64_t C, int64_t D) {
    for (int64_t e = 0; e < D; e += LANES) {
        const int full = e + LANES <= D; /* else the last, partial vector of a row: lane by lane */
        vec xv[BLOCK], acc[BLOCK];
        for (int r = 0; r < BLOCK; r++) {
            acc[r] = splat(0);
            xv[r] = splat(0);
            if (r < nb && full) xv[r] = load(x + r * D + e);
            for (int64_t t = 0; r < nb && !full && t < D - e; t++) xv[r][t] = x[r * D + e + t];
        }
        for (int64_t j = 0; j < C; j++) {
            vec wv = splat(0), dw;
            if (full) wv = load(W + j * D + e), dw = load(dW + j * D + e);
            else
                for (int64_t t = 0; t < D - e; t++) wv[t] = W[j * D + e + t], dw[t] = dW[j * D + e + t];
            for (int r = 0; r < BLOCK; r++) { /* rows past nb hold zeros */
                const real gj = r < nb ? g[r * ld + j] : 0;
                acc[r] += gj * wv;
                dw += gj * xv[r];
            }
            if (full) *(vec *)(dW + j * D + e) = dw;
            else
                for (int64_t t = 0; t < D - e; t++) dW[j * D + e + t] = dw[t];
        }
        for (int r = 0; r < nb; r++)
            for (int64_t t = 0; t < LANES && e + t < D; t++) dx[r * D + e + t] = acc[r][t];
    }
    for (int r = 0; r < nb; r++)
        for (int64_t j = 0; j < C; j++) db[j] += g[r * ld + j];
}

/* The gradient on the scores g (N, C) from those on top_p (N, K; NULL: none), the load balance and the
   z-loss, and what router_forward saved, taken through the scores = x W^T + b (x (N, D), W (C, D)) to
   dx (N, D), dW (C, D) and db (C), BLOCK decisions' rows of g at a time (g itself is never written). */
int router_backward(const real *restrict d_top_p, double d_balance, double d_z, const real *restrict w,
                    const real *restrict probs, const real *restrict top_p, const int64_t *restrict top_i,
                    const real *restrict lse, const real *restrict routed_share,
                    const real *restrict shared_p, const real *restrict counts, const real *restrict x, const real *restrict W, real *restrict dx, real *restrict dW,
                    real *restrict db, int64_t N, int64_t C, int64_t S, int64_t K, int64_t D) {
    const int64_t R = C - S, Rv = padded(R);
    if (!sizes_ok(R, S, K)) return 2;
    real *c = get_scratch(Rv + BLOCK * C); /* the load balance's gradient on p_i; BLOCK rows of g */
    if (!c) return 1;
    memset(dW, 0, C * D * sizeof(real));
    memset(db, 0, C * sizeof(real));
    double n = 0;
    for (int64_t d = 0; d < N; d++) n += w[d];
    n = n > 1 ? n : 1;
    for (int64_t j = 0; j < Rv; j++) c[j] = j < R ? (real)(d_balance * R / (n * n * K) * counts[j]) : 0;
    const int64_t Rw = R / LANES * LANES; /* whole vectors of a row of probs (rows need not be aligned) */
    for (int64_t d = 0; d < N; d++) {
        const real *p = probs + d * R;
        real *g = c + Rv + d % BLOCK * C;
        const real wd = w[d], zt = (real)(d_z * 2 * wd * lse[d] / n);
        real top_sum = 0; /* sum of g p at the picks */
        if (d_top_p)
            for (int64_t k = 0; k < K; k++) top_sum += d_top_p[d * K + k] * top_p[d * K + k];
        real pc = 0;
        if (wd != 0) {
            vec acc = splat(0);
            for (int64_t j = 0; j < Rw; j += LANES) acc += load(p + j) * load(c + j);
            pc = hsum(acc);
            for (int64_t j = Rw; j < R; j++) pc += p[j] * c[j];
        }
        const real coef = zt * routed_share[d] - (wd * pc + top_sum);
        for (int64_t j = 0; j < Rw; j += LANES) *(vec *)(g + S + j) = load(p + j) * (coef + wd * load(c + j));
        for (int64_t j = Rw; j < R; j++) g[S + j] = p[j] * (coef + wd * c[j]);
        if (d_top_p)
            for (int64_t k = 0; k < K; k++) g[S + top_i[d * K + k]] += d_top_p[d * K + k] * top_p[d * K + k];
        for (int64_t s = 0; s < S; s++) g[s] = zt * shared_p[d * S + s];
        const int64_t first = d - d % BLOCK; /* the block's first decision */
        if (d % BLOCK == BLOCK - 1 || d == N - 1)
            to_linear(c + Rv, C, (int)(d - first + 1), x + first * D, W, dx + first * D, dW, db, C, D);
    }
    return 0;
}
