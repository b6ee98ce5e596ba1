/* The router head on the CPU: softmax, top-k and the router's losses over a batch of chapter scores.
 *
 * Built by moc/kernels/cpu_router.py with the system C compiler, one library per dtype (-DREAL=float|
 * double). The maths and every output are those of moc/kernels/router_head.py (head_forward_torch and
 * head_backward_torch), for N decisions' scores l (N, C) over S shared chapters and R = C - S routed ones:
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

/* probs, top_p, top_i, lse_r/lse/routed_share (per decision), shared_p, counts, and the load balance,
   z-loss and entropy from scores (N, C) and w (N,). Returns 0, 1 when out of memory, 2 for bad sizes. */
int router_forward(const real *restrict scores, const real *restrict w, real *restrict probs,
                   real *restrict top_p, int64_t *restrict top_i, real *restrict lse_out,
                   real *restrict routed_share, real *restrict shared_p, real *restrict counts,
                   real *restrict balance, real *restrict z_loss, real *restrict entropy_out, int64_t N,
                   int64_t C, int64_t S, int64_t K) {
    const int64_t R = C - S, Rv = padded(R);
    if (!sizes_ok(R, S, K)) return 2;
    real *row = get_scratch(2 * Rv);
    if (!row) return 1;
    real *p_sum = row + Rv; /* sum over valid decisions of p */
    memset(p_sum, 0, Rv * sizeof(real));
    memset(counts, 0, R * sizeof(real));
    double n = 0, z = 0, entropy = 0;
    for (int64_t d = 0; d < N; d++) {
        const real *l = scores + d * C;
        /* the routed scores, padded with the most negative finite value: exp gives 0, times it 0 */
        memcpy(row, l + S, R * sizeof(real));
        for (int64_t j = R; j < Rv; j++) row[j] = (real)LOWEST;
        vec m[CHAINS];
        for (int c = 0; c < CHAINS; c++) m[c] = splat(-INFINITY);
        for (int64_t j = 0; j < Rv; j += CHAINS * LANES)
            for (int c = 0; c < CHAINS; c++) {
                const vec x = load(row + j + c * LANES);
                m[c] = select_lt(m[c], x, x, m[c]);
            }
        for (int c = 1; c < CHAINS; c++) m[0] = select_lt(m[0], m[c], m[c], m[0]);
        const real mx = hmax(m[0]);
        vec total = splat(0), dot = splat(0);
        for (int64_t j = 0; j < Rv; j += LANES) {
            const vec x = load(row + j), e = exp_v(x - mx);
            total += e;
            dot += e * x;
            *(vec *)(row + j) = e;
        }
        const real sum = hsum(total), lse_r = mx + log(sum);
        /* the shared chapters' logsumexp lse_s, then lse = logaddexp(lse_r, lse_s) */
        const real *ls = l, ms = S ? ls[0] : -INFINITY;
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
        for (int64_t j = 0; j < Rv; j += LANES) {
            const vec pj = load(row + j) * inv;
            *(vec *)(row + j) = pj;
            if (wd != 0) *(vec *)(p_sum + j) += pj * wd;
        }
        memcpy(probs + d * R, row, R * sizeof(real));
        lse_out[d] = lse_all;
        routed_share[d] = share;
        for (int64_t s = 0; s < S; s++) shared_p[d * S + s] = S == 1 ? shared : exp(ls[s] - lse_all);
        for (int64_t j = R; j < Rv; j++) row[j] = -1; /* never picked: probabilities are >= 0 */
        for (int64_t k = 0; k < K; k++) {
            real value;
            int64_t i = arg_max(row, Rv, &value);
            if (i >= R || !(value >= 0)) /* a row of NaN (a diverged run): distinct real ids, NaN kept */
                i = k, value = row[k];
            top_p[d * K + k] = value;
            top_i[d * K + k] = i;
            counts[i] += wd;
            row[i] = -1;
        }
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
