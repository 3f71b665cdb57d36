/* One greedy decoding step of an NLLB-200 / M2M100 decoder, for one sentence, in one call.
 *
 * On a CPU a decoding step is memory-bound: it reads every decoder weight once (~840 MB in float32
 * for the 600M model with a restricted head) and does little else. Run as MLX ops, a step is ~800
 * small ops besides its ~50 products, each op a few microseconds of dispatch between the Python
 * thread and MLX's stream thread, which on two cores also take time from the product's second
 * thread (measured: 4-7 ms per 20 ms step). Here the step is one call: the products go to the
 * cblas_sgemm given at setup (the gemv shim's, whose matrix-vector kernel and worker threads read the
 * weights in place), everything else (layer norms, attention over the caches, residuals) runs on
 * the calling thread in plain C, in microseconds.
 *
 * Same model and math as mlx_stream_tts/models/nllb.py (pre-norm layers, scaled embeddings plus
 * sinusoidal positions, final layer norm, output head), float32 activations. The weights are the MLX
 * model's own buffers (no copy). Sums of activations run in 16 fixed lanes, so a result does not
 * depend on where a buffer lies in memory.
 *
 * Models quantized by MLX (affine: 8 or 4 bits, a scale and an offset per group of 32-128 weights of a
 * row) run their products here too, on the gemv shim's threads, as sum_g scale_g * (q_g . x_g) +
 * offset_g * sum(x_g): MLX's own quantized CPU kernels were ~10x slower than float32 on this
 * project's machine, and these read 4x (8 bits) or ~7x (4 bits) fewer bytes than float32.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*task_fn)(const void *ctx, int r0, int r1);
typedef void (*parallel_fn)(task_fn task, const void *ctx, int rows, long bytes);

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

/* A linear layer: float32 weight (n, k), or MLX's quantized rows (uint8 / packed uint4, with float32
 * scales and offsets (n, k / group_size)); bias optional. */
typedef struct {
    const void *w;
    const float *scales, *offsets; /* NULL: float32 weight */
    const float *bias;
} linear_t;

/* Per layer, in this order (nllb_native.py fills them): layer norms (weight, bias) ... */
enum { LN1_W, LN1_B, LN2_W, LN2_B, LN3_W, LN3_B, NORMS };
/* ... and linear layers; Q is the fused (3d, d) q/k/v matrix when K has no weight. */
enum { L_Q, L_K, L_V, L_O, L_CQ, L_CO, L_FC1, L_FC2, LINEARS };

enum { ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU };

/* Mirrored by ctypes in nllb_native.py: keep the two in step. */
typedef struct {
    int d, heads, ffn, layers, act;
    int n_out, vocab, n_positions, position_offset; /* position row of step t: t + position_offset */
    int max_len, src_len;
    int bits, group_size; /* of the quantized linear layers (bits 0: none) */
    float embed_scale, eps;
    sgemm_fn sgemm;
    parallel_fn parallel;
    const float *const *norms; /* layers * NORMS */
    const linear_t *linears;   /* layers * LINEARS */
    const float *final_w, *final_b;
    linear_t head;          /* (n_out, d), no bias */
    linear_t embed;         /* (vocab, d) */
    const float *positions; /* (n_positions, d) */
    const float *cross_k, *cross_v; /* (layers, src_len, d) */
    float *self_k, *self_v;         /* (layers, max_len, d) */
    float *work;   /* mst_nllb_work_size floats */
    float *logits; /* n_out */
} nllb_decoder;

static float lanes_sum(const float *acc) {
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
}

/* Sum of x[0:n] in 16 fixed lanes (an order that does not depend on where x lies). */
static float total(const float *x, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; ++l) acc[l] += x[j + l];
    for (int l = 0; j < n; ++j, ++l) acc[l] += x[j];
    return lanes_sum(acc);
}

static float dot(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; ++l) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < n; ++j, ++l) acc[l] += a[j] * b[j];
    return lanes_sum(acc);
}

static void layer_norm(const float *x, const float *w, const float *b, float eps, int d, float *out) {
    float mean = total(x, d) * (1.0f / (float)d);
    for (int j = 0; j < d; ++j) out[j] = x[j] - mean;
    float var = dot(out, out, d) * (1.0f / (float)d);
    float r = 1.0f / sqrtf(var + eps);
    for (int j = 0; j < d; ++j) out[j] = out[j] * r * w[j] + b[j];
}

/* ------------------------------------------------------------------ quantized products */

typedef struct {
    const uint8_t *q;
    const float *scales, *offsets, *bias, *x, *xsum; /* xsum: sum of x over each group */
    float *y;
    int k, group_size, bits;
    /* For the integer kernel: x ~= xscale * (254^2 * x1 + 254 * x2 + x3), int8 each (quantize_x). */
    const int8_t *x1, *x2, *x3;
    float xscale;
} qjob;

static inline long row_bytes(const qjob *j) { return (long)j->k * j->bits / 8; }

/* Weight c of a quantized row: one byte each, or two per byte, the low nibble first. */
static inline int quant_value(const uint8_t *q, int c, int bits) {
    return bits == 8 ? q[c] : (q[c >> 1] >> ((c & 1) * 4)) & 15;
}

static void qrows_plain(const void *ctx, int r0, int r1) {
    const qjob *j = ctx;
    int gs = j->group_size, groups = j->k / gs;
    for (int i = r0; i < r1; ++i) {
        const uint8_t *q = j->q + (size_t)i * row_bytes(j);
        const float *sc = j->scales + (size_t)i * groups, *off = j->offsets + (size_t)i * groups;
        float total = 0.0f;
        for (int g = 0; g < groups; ++g) {
            float acc[16] = {0};
            for (int e = 0; e < gs; ++e) acc[e & 15] += (float)quant_value(q, g * gs + e, j->bits) * j->x[g * gs + e];
            total += sc[g] * lanes_sum(acc) + off[g] * j->xsum[g];
        }
        j->y[i] = total + (j->bias ? j->bias[i] : 0.0f);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX512 1

/* 16 weights from e (a multiple of 16) of a quantized row, as floats. */
__attribute__((target("avx512f,avx512bw,fma"))) static inline __m512 weights16(const uint8_t *q, int e, int bits) {
    __m128i v;
    if (bits == 8) {
        v = _mm_loadu_si128((const __m128i *)(q + e));
    } else { /* two per byte, the low nibble first */
        __m128i b = _mm_loadl_epi64((const __m128i *)(q + e / 2)), m = _mm_set1_epi8(15);
        v = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}

/* R rows from row i (R = 4: four independent sums keep the FMA units busy); x comes from L1. */
#define FLOAT_ROWS(R)                                                                                         \
    do {                                                                                                      \
        const float *sc = j->scales + (size_t)i * groups, *off = j->offsets + (size_t)i * groups;             \
        __m512 t[R];                                                                                          \
        float o[R];                                                                                           \
        for (int r = 0; r < R; ++r) {                                                                         \
            t[r] = _mm512_setzero_ps();                                                                       \
            o[r] = 0.0f;                                                                                      \
        }                                                                                                     \
        for (int g = 0; g < groups; ++g) {                                                                    \
            __m512 a[R];                                                                                      \
            for (int r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();                                           \
            for (int e = g * gs; e < (g + 1) * gs; e += 16) {                                                 \
                __m512 xv = _mm512_loadu_ps(j->x + e);                                                        \
                for (int r = 0; r < R; ++r)                                                                   \
                    a[r] = _mm512_fmadd_ps(weights16(j->q + (size_t)(i + r) * rb, e, bits), xv, a[r]);        \
            }                                                                                                 \
            for (int r = 0; r < R; ++r) {                                                                     \
                t[r] = _mm512_fmadd_ps(_mm512_set1_ps(sc[r * groups + g]), a[r], t[r]);                       \
                o[r] += off[r * groups + g] * j->xsum[g];                                                     \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < R; ++r)                                                                           \
            j->y[i + r] = _mm512_reduce_add_ps(t[r]) + o[r] + (j->bias ? j->bias[i + r] : 0.0f);              \
    } while (0)

__attribute__((target("avx512f,avx512bw,fma"))) static void qrows_avx512(const void *ctx, int r0, int r1) {
    const qjob *j = ctx;
    int gs = j->group_size, groups = j->k / gs, bits = j->bits;
    long rb = row_bytes(j);
    int i = r0;
    for (; i + 4 <= r1; i += 4) FLOAT_ROWS(4);
    for (; i < r1; ++i) FLOAT_ROWS(1);
}
#undef FLOAT_ROWS

/* The integer kernel: 8-bit dot products (vpdpbusd: unsigned weight bytes times signed bytes, four
 * products summed into each int32 lane) against x in three signed bytes, x ~= xscale * (254^2 * x1 +
 * 254 * x2 + x3), which keeps x to ~6e-8 of its largest element, float32's own precision. Per group the
 * exact int32 sums combine as a1 * 254^2 + (a2 * 254 + a3) (the bracket in int32: no overflow for groups
 * up to 128), and take the group's scale. Converting each weight to a float instead (the kernel above)
 * was compute-bound at ~11 GB/s per core. This one's dense arithmetic leaves few loads in flight (one
 * core: ~23 GB/s from memory, ~38 from cache); prefetching 512 bytes ahead gives ~8% back. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static inline __m256i bytes32(const uint8_t *q, int e,
                                                                                                  int bits) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i *)(q + e));
    __m128i b = _mm_loadu_si128((const __m128i *)(q + e / 2)), m = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
}

#define QPREFETCH 512
#define VNNI_ROWS(R)                                                                                          \
    do {                                                                                                      \
        const float *sc = j->scales + (size_t)i * groups, *off = j->offsets + (size_t)i * groups;             \
        const uint8_t *q[R];                                                                                  \
        __m256 t[R];                                                                                          \
        for (int r = 0; r < R; ++r) {                                                                         \
            q[r] = j->q + (size_t)(i + r) * rb;                                                               \
            t[r] = _mm256_setzero_ps();                                                                       \
        }                                                                                                     \
        for (int g = 0; g < groups; ++g) {                                                                    \
            __m256i a[R], b[R], c[R];                                                                         \
            for (int r = 0; r < R; ++r) a[r] = b[r] = c[r] = _mm256_setzero_si256();                          \
            for (int e = g * gs; e < (g + 1) * gs; e += 32) {                                                 \
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(j->x1 + e));                               \
                __m256i v2 = _mm256_loadu_si256((const __m256i *)(j->x2 + e));                               \
                __m256i v3 = _mm256_loadu_si256((const __m256i *)(j->x3 + e));                               \
                for (int r = 0; r < R; ++r) {                                                                 \
                    _mm_prefetch((const char *)q[r] + e * bits / 8 + QPREFETCH, _MM_HINT_T0);                   \
                    __m256i w = bytes32(q[r], e, bits);                                                       \
                    a[r] = _mm256_dpbusd_epi32(a[r], w, v1);                                                  \
                    b[r] = _mm256_dpbusd_epi32(b[r], w, v2);                                                  \
                    c[r] = _mm256_dpbusd_epi32(c[r], w, v3);                                                  \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < R; ++r) {                                                                     \
                __m256i low = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(b[r], 8),                   \
                                                                _mm256_slli_epi32(b[r], 1)), c[r]);           \
                __m256 sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r]), _mm256_set1_ps(64516.0f),              \
                                             _mm256_cvtepi32_ps(low));                                        \
                t[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r * groups + g]), sum, t[r]);                        \
            }                                                                                                 \
        }                                                                                                     \
        for (int r = 0; r < R; ++r) {                                                                         \
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(t[r]), _mm256_extractf128_ps(t[r], 1));              \
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));                                                           \
            h = _mm_add_ss(h, _mm_movehdup_ps(h));                                                            \
            float o = dot(off + r * groups, j->xsum, groups); /* the offsets' part, once per row */        \
            j->y[i + r] = _mm_cvtss_f32(h) * j->xscale + o + (j->bias ? j->bias[i + r] : 0.0f);               \
        }                                                                                                     \
    } while (0)

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static void qrows_vnni(const void *ctx, int r0,
                                                                                           int r1) {
    const qjob *j = ctx;
    int gs = j->group_size, groups = j->k / gs, bits = j->bits;
    long rb = row_bytes(j);
    int i = r0;
    for (; i + 4 <= r1; i += 4) VNNI_ROWS(4);
    for (; i < r1; ++i) VNNI_ROWS(1);
}
#undef VNNI_ROWS
#endif

static task_fn qrows = qrows_plain;

/* ------------------------------------------------------- float32 products for several rows */

/* y[v * n + i] = w[i] . x[v] (+ bias[i]) for vectors v < nv (even, zero-padded): each weight row is read
 * once for all the vectors (a batch of sentences, or beams), instead of once per vector. */
typedef struct {
    const float *w, *x, *bias;
    float *y;
    int k, n, nv;
} fjob;

static void frows_plain(const void *ctx, int r0, int r1) {
    const fjob *j = ctx;
    for (int v = 0; v < j->nv; ++v)
        for (int i = r0; i < r1; ++i)
            j->y[(size_t)v * j->n + i] = dot(j->w + (size_t)i * j->k, j->x + (size_t)v * j->k, j->k) +
                                         (j->bias ? j->bias[i] : 0.0f);
}

#ifdef HAVE_AVX512
/* Four weight rows by `vec` (4 or 2) vectors: up to sixteen sums, each weight and x vector loaded once
 * per 16 columns (x from L1). Rows are read with aligned loads after a masked head when k keeps them on
 * one alignment (loads across cache lines read ~40% slower). Sixteen FMAs per four cache lines cut one
 * core's read speed from ~41 to ~17 GB/s here (the same loop with four FMAs reads at 41); prefetching
 * 256 bytes ahead gives ~10% back. Still: four rows in one pass instead of four passes. */
#define PREFETCH 256
__attribute__((target("avx512f,fma"), always_inline)) static inline void four_rows(
    const fjob *j, const float *const *w, int i, int live, int v0, int vec, int head, int body, __mmask16 hm,
    __mmask16 tm, int aligned) {
    int k = j->k;
    const float *x[4];
    for (int v = 0; v < 4; ++v) x[v] = j->x + (size_t)(v0 + (v < vec ? v : 0)) * k;
    __m512 acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
#define BLOCK(LOAD_X, LOAD_W, E)                                                                             \
    do {                                                                                                     \
        __m512 xv[4];                                                                                        \
        for (int v = 0; v < vec; ++v) xv[v] = LOAD_X(x[v] + (E));                                            \
        for (int r = 0; r < 4; ++r) {                                                                        \
            __m512 wv = LOAD_W(w[r] + (E));                                                                  \
            for (int v = 0; v < vec; ++v) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);                 \
        }                                                                                                    \
    } while (0)
#define HEAD(q) _mm512_maskz_loadu_ps(hm, q)
#define TAIL(q) _mm512_maskz_loadu_ps(tm, q)
#define PREFETCH_ROWS(E) for (int r = 0; r < 4; ++r) _mm_prefetch((const char *)(w[r] + (E)) + PREFETCH, _MM_HINT_T0)
    if (head) BLOCK(HEAD, HEAD, 0);
    if (aligned) {
        for (int e = head; e < body; e += 16) {
            PREFETCH_ROWS(e);
            BLOCK(_mm512_loadu_ps, _mm512_load_ps, e);
        }
    } else {
        for (int e = head; e < body; e += 16) {
            PREFETCH_ROWS(e);
            BLOCK(_mm512_loadu_ps, _mm512_loadu_ps, e);
        }
    }
    if (body < k) BLOCK(TAIL, TAIL, body);
#undef BLOCK
#undef HEAD
#undef TAIL
#undef PREFETCH_ROWS
    for (int r = 0; r < live; ++r)
        for (int v = 0; v < vec; ++v)
            j->y[(size_t)(v0 + v) * j->n + i + r] = _mm512_reduce_add_ps(acc[r][v]) + (j->bias ? j->bias[i + r] : 0.0f);
}

/* nv even: passes of four vectors, then one of two. */
__attribute__((target("avx512f,fma"))) static void frows_avx512(const void *ctx, int r0, int r1) {
    const fjob *j = ctx;
    int k = j->k;
    for (int i = r0; i < r1; i += 4) {
        int live = r1 - i < 4 ? r1 - i : 4;
        const float *w[4];
        for (int r = 0; r < 4; ++r) w[r] = j->w + (size_t)(i + (r < live ? r : 0)) * k;
        int head = k % 16 == 0 && (uintptr_t)w[0] % 4 == 0 ? (int)((16 - ((uintptr_t)w[0] / 4) % 16) % 16) : 0;
        if (head > k) head = k;
        int body = head + ((k - head) & ~15);
        __mmask16 hm = (__mmask16)((1u << head) - 1u), tm = (__mmask16)((1u << (k - body)) - 1u);
        int aligned = k % 16 == 0 && (head || (uintptr_t)w[0] % 64 == 0); /* all four rows on one alignment */
        int v0 = 0;
        for (; v0 + 4 <= j->nv; v0 += 4) four_rows(j, w, i, live, v0, 4, head, body, hm, tm, aligned);
        if (v0 < j->nv) four_rows(j, w, i, live, v0, 2, head, body, hm, tm, aligned);
    }
}
#endif

static task_fn frows = frows_plain;

static inline int8_t byte_of(double v) { return (int8_t)(v > 127.0 ? 127.0 : v < -127.0 ? -127.0 : v); }

/* x as three signed bytes per element for qrows_vnni: with v = x / s, s = max|x| / 127, x1 = round(v),
 * x2 = round(254 * (v - x1)), x3 = round(254 * (254 * (v - x1) - x2)); returns s / 254^2. Base 254, not
 * 256: each residual is within +-0.5, so each byte within +-127 (no clipping, which cost ~1e-4). */
static float quantize_x(const float *x, int k, int8_t *x1, int8_t *x2, int8_t *x3) {
    float top = 0.0f;
    for (int c = 0; c < k; ++c) top = fmaxf(top, fabsf(x[c]));
    if (!(top > 0.0f) || !isfinite(top)) { /* zeros (non-finite input is not a case a model step meets) */
        memset(x1, 0, (size_t)k);
        memset(x2, 0, (size_t)k);
        memset(x3, 0, (size_t)k);
        return 0.0f;
    }
    double inv = 127.0 / top; /* double: the third byte resolves 254^-2 of a unit */
    for (int c = 0; c < k; ++c) {
        double v = x[c] * inv, a = nearbyint(v), r = (v - a) * 254.0, b = nearbyint(r);
        x1[c] = byte_of(a);
        x2[c] = byte_of(b);
        x3[c] = byte_of(nearbyint((r - b) * 254.0));
    }
    return (float)(top / 127.0 / 64516.0);
}

/* out = x @ w.T + bias for w (n, k): a one-row product. Float32 weights go to the BLAS call (the bias
 * added by it: beta 1); quantized ones to the row kernel on the shim's threads. `xsum` is work space of
 * k floats. */
static void linear(const nllb_decoder *m, const float *x, const linear_t *lin, int n, int k, float *out,
                   float *xsum) {
    if (!lin->scales) {
        if (lin->bias) memcpy(out, lin->bias, sizeof(float) * (size_t)n);
        m->sgemm(RowMajor, NoTrans, Trans, 1, n, k, 1.0f, x, k, (const float *)lin->w, k, lin->bias ? 1.0f : 0.0f,
                 out, n);
        return;
    }
    int gs = m->group_size, groups = k / gs;
    for (int g = 0; g < groups; ++g) xsum[g] = total(x + g * gs, gs);
    qjob job = {lin->w, lin->scales, lin->offsets, lin->bias, x, xsum, out, k, gs, m->bits, NULL, NULL, NULL, 0.0f};
    task_fn kern = qrows;
#ifdef HAVE_AVX512
    if (kern == qrows_vnni && gs % 32) kern = qrows_avx512; /* it takes 32 weights at a time */
    if (kern == qrows_vnni) {
        int8_t *x1 = (int8_t *)(xsum + groups), *x2 = x1 + k, *x3 = x2 + k;
        job.xscale = quantize_x(x, k, x1, x2, x3);
        job.x1 = x1;
        job.x2 = x2;
        job.x3 = x3;
    }
#endif
    m->parallel(kern, &job, n, (long)n * (row_bytes(&job) + 8L * groups));
}

/* Row `row` of an embedding table, float32 or quantized, into out (d floats). */
static void embedding_row(const nllb_decoder *m, const linear_t *e, int row, float *out) {
    int d = m->d;
    if (!e->scales) {
        memcpy(out, (const float *)e->w + (size_t)row * d, sizeof(float) * (size_t)d);
        return;
    }
    int gs = m->group_size, groups = d / gs;
    const uint8_t *q = (const uint8_t *)e->w + (size_t)row * d * m->bits / 8;
    const float *sc = e->scales + (size_t)row * groups, *off = e->offsets + (size_t)row * groups;
    for (int c = 0; c < d; ++c) out[c] = sc[c / gs] * (float)quant_value(q, c, m->bits) + off[c / gs];
}

/* Attention of one query (d, in heads) over n rows of keys/values laid out (n, d). */
static void attend(const float *q, const float *keys, const float *values, int n, int d, int heads,
                   float *scores, float *out) {
    int dh = d / heads;
    float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < heads; ++h) {
        const float *qh = q + h * dh;
        float top = -INFINITY;
        for (int s = 0; s < n; ++s) {
            scores[s] = dot(qh, keys + (size_t)s * d + h * dh, dh) * scale;
            if (scores[s] > top) top = scores[s];
        }
        float total = 0.0f;
        for (int s = 0; s < n; ++s) total += (scores[s] = expf(scores[s] - top));
        float inv = 1.0f / total;
        float *oh = out + h * dh;
        for (int j = 0; j < dh; ++j) oh[j] = 0.0f;
        for (int s = 0; s < n; ++s) {
            const float *vs = values + (size_t)s * d + h * dh;
            float p = scores[s] * inv;
            for (int j = 0; j < dh; ++j) oh[j] += p * vs[j];
        }
    }
}

static float activation(int act, float v) {
    switch (act) {
    case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case ACT_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    case ACT_SILU: return v / (1.0f + expf(-v));
    default: return v > 0.0f ? v : 0.0f;
    }
}

#define MAX_ROWS 64

/* The same product for n rows (sentences, beams), in[r] -> out[r] (+ off floats). One row: linear()
 * (the shim's matrix-vector kernel). Several float32 rows: each weight row read once for all of them
 * (frows); quantized rows one at a time (their kernel is compute-bound: no read to share). */
static void linear_rows(const nllb_decoder *const *ms, int n, float *const *in, const linear_t *lin, int rows,
                        int k, float *const *out, int off, float *const *xsum, float *batch) {
    if (n == 1 || lin->scales) {
        for (int r = 0; r < n; ++r) linear(ms[r], in[r], lin, rows, k, out[r] + off, xsum[r]);
        return;
    }
    int nv = (n + 1) & ~1, room = (n + 3) & ~3; /* the kernel takes vectors four, then two at a time */
    float *xb = batch, *yb = batch + (size_t)room * k;
    for (int r = 0; r < nv; ++r) {
        if (r < n) memcpy(xb + (size_t)r * k, in[r], sizeof(float) * (size_t)k);
        else memset(xb + (size_t)r * k, 0, sizeof(float) * (size_t)k);
    }
    fjob job = {(const float *)lin->w, xb, lin->bias, yb, k, rows, nv};
    ms[0]->parallel(frows, &job, rows, (long)rows * k * 4);
    for (int r = 0; r < n; ++r) memcpy(out[r] + off, yb + (size_t)r * rows, sizeof(float) * (size_t)rows);
}

/* Feed tokens[r] at target position `pos` (0 for the start token) to each of n sentences (their own
 * caches, sources and work space; the same weights); keys/values go into each cache at row `pos`. With
 * `want_logits`, each sentence's head scores go to its logits and the index of its highest to best[r].
 * `batch`: mst_nllb_batch_size floats (unused for one row). 0, or -1 on bad arguments. */
int mst_nllb_step_rows(const nllb_decoder *const *ms, int n, const int *tokens, int pos, int want_logits,
                       int *best, float *batch) {
    if (n < 1 || n > MAX_ROWS) return -1;
    const nllb_decoder *m = ms[0];
    int d = m->d;
    if (d % m->heads || pos < 0 || pos + m->position_offset >= m->n_positions) return -1;
    for (int r = 0; r < n; ++r)
        if (tokens[r] < 0 || tokens[r] >= m->vocab || pos >= ms[r]->max_len) return -1;
    float *x[MAX_ROWS], *h[MAX_ROWS], *qkv[MAX_ROWS], *att[MAX_ROWS], *f[MAX_ROWS], *scores[MAX_ROWS],
        *xsum[MAX_ROWS], *logits[MAX_ROWS];
    const float *p = m->positions + (size_t)(pos + m->position_offset) * d;
    for (int r = 0; r < n; ++r) {
        x[r] = ms[r]->work; h[r] = x[r] + d; qkv[r] = h[r] + d; att[r] = qkv[r] + 3 * d; f[r] = att[r] + d;
        scores[r] = f[r] + (m->ffn > 2 * d ? m->ffn : 2 * d);
        xsum[r] = scores[r] + (ms[r]->max_len > ms[r]->src_len ? ms[r]->max_len : ms[r]->src_len);
        logits[r] = ms[r]->logits;
        embedding_row(m, &m->embed, tokens[r], x[r]);
        for (int j = 0; j < d; ++j) x[r][j] = x[r][j] * m->embed_scale + p[j];
    }
#define ROWS(in, which, nrows, k, out, off) linear_rows(ms, n, in, &lin[which], nrows, k, out, off, xsum, batch)
    for (int l = 0; l < m->layers; ++l) {
        const float *const *norm = m->norms + (size_t)l * NORMS;
        const linear_t *lin = m->linears + (size_t)l * LINEARS;

        for (int r = 0; r < n; ++r) layer_norm(x[r], norm[LN1_W], norm[LN1_B], m->eps, d, h[r]);
        if (lin[L_K].w) { /* separate q/k/v products, into the same layout as the fused one */
            ROWS(h, L_Q, d, d, qkv, 0);
            ROWS(h, L_K, d, d, qkv, d);
            ROWS(h, L_V, d, d, qkv, 2 * d);
        } else {
            ROWS(h, L_Q, 3 * d, d, qkv, 0);
        }
        for (int r = 0; r < n; ++r) {
            size_t at = (size_t)l * ms[r]->max_len * d;
            float *keys = ms[r]->self_k + at, *values = ms[r]->self_v + at;
            memcpy(keys + (size_t)pos * d, qkv[r] + d, sizeof(float) * (size_t)d);
            memcpy(values + (size_t)pos * d, qkv[r] + 2 * d, sizeof(float) * (size_t)d);
            attend(qkv[r], keys, values, pos + 1, d, m->heads, scores[r], att[r]);
        }
        ROWS(att, L_O, d, d, h, 0);
        for (int r = 0; r < n; ++r) {
            for (int j = 0; j < d; ++j) x[r][j] += h[r][j];
            layer_norm(x[r], norm[LN2_W], norm[LN2_B], m->eps, d, h[r]);
        }
        ROWS(h, L_CQ, d, d, qkv, 0);
        for (int r = 0; r < n; ++r) {
            size_t at = (size_t)l * ms[r]->src_len * d;
            attend(qkv[r], ms[r]->cross_k + at, ms[r]->cross_v + at, ms[r]->src_len, d, m->heads, scores[r], att[r]);
        }
        ROWS(att, L_CO, d, d, h, 0);
        for (int r = 0; r < n; ++r) {
            for (int j = 0; j < d; ++j) x[r][j] += h[r][j];
            layer_norm(x[r], norm[LN3_W], norm[LN3_B], m->eps, d, h[r]);
        }
        ROWS(h, L_FC1, m->ffn, d, f, 0);
        for (int r = 0; r < n; ++r)
            for (int j = 0; j < m->ffn; ++j) f[r][j] = activation(m->act, f[r][j]);
        ROWS(f, L_FC2, d, m->ffn, h, 0);
        for (int r = 0; r < n; ++r)
            for (int j = 0; j < d; ++j) x[r][j] += h[r][j];
    }
#undef ROWS
    if (!want_logits) return 0;
    for (int r = 0; r < n; ++r) layer_norm(x[r], m->final_w, m->final_b, m->eps, d, h[r]);
    linear_rows(ms, n, h, &m->head, m->n_out, d, logits, 0, xsum, batch);
    for (int r = 0; r < n; ++r) {
        int top = 0;
        for (int i = 1; i < m->n_out; ++i)
            if (logits[r][i] > logits[r][top]) top = i;
        best[r] = top;
    }
    return 0;
}

/* One sentence: mst_nllb_step_rows for one row. Returns the best output column (0 without
 * `want_logits`), -1 on bad arguments. */
int mst_nllb_step(const nllb_decoder *m, int token, int pos, int want_logits) {
    int best = 0;
    return mst_nllb_step_rows(&m, 1, &token, pos, want_logits, &best, NULL) ? -1 : best;
}

/* Floats of batch space that mst_nllb_step_rows needs for n rows. */
long mst_nllb_batch_size(int n, int d, int ffn, int n_out) {
    long nv = (n + 3) & ~3, k = ffn > d ? ffn : d, rows = 3L * d;
    if (ffn > rows) rows = ffn;
    if (n_out > rows) rows = n_out;
    return nv * (k + rows);
}

/* Floats of work space that mst_nllb_step needs. */
long mst_nllb_work_size(int d, int ffn, int max_len, int src_len) {
    long rows = max_len > src_len ? max_len : src_len, widest = ffn > d ? ffn : d;
    /* the last: group sums and x in bytes for the integer kernel (k / 16 + 3k / 4 floats, with room) */
    return 6L * d + (ffn > 2 * d ? ffn : 2 * d) + rows + widest + 32;
}

/* The kernels for quantized products: 0 plain C, 1 AVX-512 floats, 2 AVX-512 VNNI integers (the
 * default where the CPU has it; tests compare them); float32 products of several rows: plain C (0) or
 * AVX-512. A kernel the CPU lacks falls back to the one
 * before it. Returns the one in use. */
int mst_nllb_set_kernel(int which) {
    qrows = qrows_plain;
    frows = frows_plain;
    int now = 0;
#ifdef HAVE_AVX512
    __builtin_cpu_init();
    if (which >= 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        qrows = qrows_avx512;
        frows = frows_avx512;
        now = 1;
        if (which >= 2 && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
            qrows = qrows_vnni;
            now = 2;
        }
    }
#endif
    return now;
}
