/* 1-D convolution in 8-bit integers with AVX-512 VNNI, for the vocoder on CPU.
 *
 * MLX's CPU backend has no fast low-precision kernels (its float16 and quantized paths are slower than
 * float32), while onnxruntime runs the same vocoder's convolutions as uint8 x int8 products with VNNI:
 * four times the multiply-adds per instruction of float32. This does the same: the input is quantized
 * per call (asymmetric uint8, one scale for the whole tensor, as ONNX's DynamicQuantizeLinear), the
 * weights once (symmetric int8, one scale per output channel), products accumulate exactly in int32.
 *
 * Layouts: input x (T, C) row-major float32 (MLX's NLC without the batch); weight (O, K, C) as MLX
 * stores conv weights; output (T, O) float32. "Same" padding: out[t] = sum_j x[t + j d - pad] w[:, j].
 * Packed weight: for each block of 64 output channels, for each tap j and group of 4 input channels,
 * 64 lanes x 4 int8 (one 64-byte row per 16 lanes per zmm), as vpdpbusd consumes them.
 * Built by mlx_stream_tts/_native.py with -mavx512f -mavx512bw -mavx512vnni and loaded only when the
 * CPU has them.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OB 64 /* output channels per block: 4 zmm of 16 int32 */
#define RB 6  /* rows per micro-tile: 6 x 4 accumulators + 4 weight registers + 1 broadcast */

static inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

static inline __mmask16 tail_mask(int c, int n) { return n - c >= 16 ? 0xFFFF : (__mmask16)((1u << (n - c)) - 1u); }

/* Size in bytes of the packed weight for (O, K, C). */
long mst_s8_packed_size(int out_c, int k, int in_c) {
    return (long)round_up(out_c, OB) * k * round_up(in_c, 4);
}

/* Quantize w (O, K, C) float32 to the packed int8 layout; per output channel: scale[o] and
 * wsum[o] = the sum of its int8 weights (for the input's zero point). Returns 0, or -1 without memory. */
int mst_s8_pack(const float *w, int out_c, int k, int in_c, int8_t *packed, float *scale, int32_t *wsum) {
    int cp = round_up(in_c, 4), op = round_up(out_c, OB), groups = cp / 4;
    /* First quantized in the weight's own order (vectorised), then moved to the packed order four
     * bytes (one lane's four input channels) at a time. */
    int8_t *tmp = calloc((size_t)out_c * k * cp, 1);
    if (!tmp) return -1;
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int o = 0; o < out_c; ++o) {
        const float *row = w + (size_t)o * k * in_c;
        long n = (long)k * in_c, i = 0;
        __m512 vmax = _mm512_setzero_ps();
        for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
        float amax = _mm512_reduce_max_ps(vmax);
        for (; i < n; ++i) amax = fmaxf(amax, fabsf(row[i]));
        scale[o] = amax > 0.0f ? amax / 127.0f : 1.0f;
        const __m512 inv = _mm512_set1_ps(1.0f / scale[o]);
        __m512i total = _mm512_setzero_si512();
        for (int jj = 0; jj < k; ++jj) {
            const float *src = row + (size_t)jj * in_c;
            int8_t *dst = tmp + ((size_t)o * k + jj) * cp;
            for (int c = 0; c < in_c; c += 16) {
                __mmask16 m = tail_mask(c, in_c);
                __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, src + c), inv));
                q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                total = _mm512_add_epi32(total, q); /* masked lanes are 0 */
                _mm_mask_storeu_epi8(dst + c, m, _mm512_cvtepi32_epi8(q));
            }
        }
        wsum[o] = _mm512_reduce_add_epi32(total);
    }
    const int32_t *t32 = (const int32_t *)tmp;
    int32_t *p32 = (int32_t *)packed;
    for (int ob = 0; ob < op / OB; ++ob)
        for (int jj = 0; jj < k; ++jj)
            for (int g = 0; g < groups; ++g)
                for (int lane = 0; lane < OB; ++lane) {
                    int o = ob * OB + lane;
                    int32_t word = 0;
                    if (o < out_c) memcpy(&word, t32 + ((size_t)o * k + jj) * groups + g, 4);
                    *p32++ = word;
                }
    free(tmp);
    return 0;
}

/* sin(t)^2 by range reduction to [-pi/2, pi/2] (sin^2 has period pi) and an odd Taylor polynomial of
 * sin: |error| < 1e-7 there; pi in two parts keeps the reduction exact for the |t| of activations. */
static inline __m512 sin_squared(__m512 t) {
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(0.318309886f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(3.14159274f), t);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-8.74227766e-8f), r);
    const __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(-2.50521084e-8f); /* -1/11! */
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.75573192e-6f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-1.98412698e-4f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(8.33333333e-3f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-1.66666667e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    const __m512 s = _mm512_mul_ps(r, p);
    return _mm512_mul_ps(s, s);
}

/* The conv's input, 16 channels from c: x, or with pre_a the snake u + sin(u)^2 of u = a x + b
 * (per channel; the snake's 1 / alpha is folded into the packed weight by the caller). */
static inline __m512 load_input(const float *row, const float *pre_a, const float *pre_b, int c, __mmask16 m) {
    /* Masked memory operations are slow on some CPUs (AMD Zen 4): only the channel tail uses them. */
    __m512 v = m == 0xFFFF ? _mm512_loadu_ps(row + c) : _mm512_maskz_loadu_ps(m, row + c);
    if (!pre_a) return v;
    __m512 a = m == 0xFFFF ? _mm512_loadu_ps(pre_a + c) : _mm512_maskz_loadu_ps(m, pre_a + c);
    __m512 b = m == 0xFFFF ? _mm512_loadu_ps(pre_b + c) : _mm512_maskz_loadu_ps(m, pre_b + c);
    __m512 u = _mm512_fmadd_ps(v, a, b);
    return _mm512_maskz_add_ps(m, u, sin_squared(u));
}

typedef struct {
    const float *x, *pre_a, *pre_b;
    int rows, in_c, cp;
    float inv_scale;
    int zp;
    uint8_t *q; /* (rows, cp) */
    float lo, hi; /* range of the rows of one part (set by range_rows) */
} quant_job;

/* min and max of the input over rows [r0, r1), 0 included (so that 0 is exact after quantization). */
static void range_rows(quant_job *job, int r0, int r1) {
    __m512 vmin = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
    for (int r = r0; r < r1; ++r) {
        const float *src = job->x + (size_t)r * job->in_c;
        for (int c = 0; c < job->in_c; c += 16) {
            __mmask16 m = tail_mask(c, job->in_c);
            __m512 v = load_input(src, job->pre_a, job->pre_b, c, m); /* masked lanes are 0 */
            vmin = _mm512_min_ps(vmin, v);
            vmax = _mm512_max_ps(vmax, v);
        }
    }
    job->lo = _mm512_reduce_min_ps(vmin);
    job->hi = _mm512_reduce_max_ps(vmax);
}

static void quantize_rows(const quant_job *job, int r0, int r1) {
    const __m512 inv = _mm512_set1_ps(job->inv_scale);
    const __m512i zp = _mm512_set1_epi32(job->zp), lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
    for (int r = r0; r < r1; ++r) {
        const float *src = job->x + (size_t)r * job->in_c;
        uint8_t *dst = job->q + (size_t)r * job->cp;
        for (int c = 0; c < job->in_c; c += 16) {
            __mmask16 m = tail_mask(c, job->in_c);
            __m512 v = load_input(src, job->pre_a, job->pre_b, c, m);
            __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zp);
            q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
            if (m == 0xFFFF) _mm_storeu_si128((__m128i *)(dst + c), _mm512_cvtepi32_epi8(q));
            else _mm_mask_storeu_epi8(dst + c, m, _mm512_cvtepi32_epi8(q));
        }
        /* channel padding: its weights are 0, any value will do; keep it defined */
        for (int c = job->in_c; c < job->cp; ++c) dst[c] = (uint8_t)job->zp;
    }
}

typedef struct {
    const uint8_t *q; /* (t + 2 pad (+ RB), cp): row t of the output starts at q + t cp */
    const int8_t *w;
    const int32_t *wsum;
    const float *wscale, *bias, *residual;
    int t, out_c, k, dilation, cp, zp;
    float xscale;
    float *out;
    int r0, r1; /* output rows of this thread */
} conv_job;

/* One micro-tile: rows [r, r + RB) x output channels [ob * 64, ob * 64 + 64). */
static inline void tile(const conv_job *job, int r, int ob) {
    __m512i acc[RB][4];
    for (int i = 0; i < RB; ++i)
        for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_si512();
    const int groups = job->cp / 4;
    const int8_t *wp = job->w + (size_t)ob * job->k * groups * OB * 4;
    for (int j = 0; j < job->k; ++j) {
        const uint8_t *xr = job->q + (size_t)(r + j * job->dilation) * job->cp;
        const int8_t *wj = wp + (size_t)j * groups * OB * 4;
        for (int g = 0; g < groups; ++g) {
            const int8_t *wg = wj + (size_t)g * OB * 4;
            __m512i w0 = _mm512_loadu_si512(wg), w1 = _mm512_loadu_si512(wg + 64);
            __m512i w2 = _mm512_loadu_si512(wg + 128), w3 = _mm512_loadu_si512(wg + 192);
            for (int i = 0; i < RB; ++i) {
                int32_t quad;
                memcpy(&quad, xr + (size_t)i * job->cp + 4 * g, 4);
                __m512i b = _mm512_set1_epi32(quad);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], b, w0);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], b, w1);
                acc[i][2] = _mm512_dpbusd_epi32(acc[i][2], b, w2);
                acc[i][3] = _mm512_dpbusd_epi32(acc[i][3], b, w3);
            }
        }
    }
    /* out = xscale * wscale[o] * (acc - zp * wsum[o]) + bias[o] */
    int o0 = ob * OB;
    int rows = job->r1 - r < RB ? job->r1 - r : RB;
    for (int v = 0; v < 4; ++v) {
        int o = o0 + 16 * v;
        if (o >= job->out_c) break;
        int n = job->out_c - o < 16 ? job->out_c - o : 16;
        __mmask16 m = (__mmask16)((1u << n) - 1u);
        __m512i corr = _mm512_mullo_epi32(_mm512_set1_epi32(job->zp), _mm512_maskz_loadu_epi32(m, job->wsum + o));
        __m512 sc = _mm512_mul_ps(_mm512_set1_ps(job->xscale), _mm512_maskz_loadu_ps(m, job->wscale + o));
        __m512 bi = job->bias ? _mm512_maskz_loadu_ps(m, job->bias + o) : _mm512_setzero_ps();
        for (int i = 0; i < rows; ++i) {
            size_t at = (size_t)(r + i) * job->out_c + o;
            __m512 add = bi;
            if (job->residual)
                add = _mm512_add_ps(bi, n == 16 ? _mm512_loadu_ps(job->residual + at)
                                                : _mm512_maskz_loadu_ps(m, job->residual + at));
            __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], corr)), sc, add);
            if (n == 16) _mm512_storeu_ps(job->out + at, y);
            else _mm512_mask_storeu_ps(job->out + at, m, y);
        }
    }
}

static void *conv_rows(void *arg) {
    const conv_job *job = arg;
    int blocks = round_up(job->out_c, OB) / OB;
    /* Rows outermost: each quantized row is read from memory once and each output row written whole;
     * the weights of all blocks (at most ~0.7 MB here) stay in L2. */
    for (int r = job->r0; r < job->r1; r += RB)
        for (int ob = 0; ob < blocks; ++ob) tile(job, r, ob);
    return NULL;
}

typedef struct {
    quant_job *job;
    int r0, r1;
    int range; /* 1: find the range (into lo / hi of a private copy), 0: quantize */
    quant_job own;
} quant_part;

static void *quant_rows(void *arg) {
    quant_part *p = arg;
    if (p->range) {
        p->own = *p->job;
        range_rows(&p->own, p->r0, p->r1);
    } else {
        quantize_rows(p->job, p->r0, p->r1);
    }
    return NULL;
}

/* Run fn over parts[0..n) (each sizeof ``size`` bytes): n - 1 new threads and the caller. */
static void run_parts(void *(*fn)(void *), void *parts, size_t size, int n) {
    pthread_t tid[8];
    int started[8] = {0};
    for (int i = 1; i < n; ++i) started[i] = pthread_create(&tid[i], NULL, fn, (char *)parts + i * size) == 0;
    fn(parts);
    for (int i = 1; i < n; ++i) {
        if (started[i]) pthread_join(tid[i], NULL);
        else fn((char *)parts + i * size);
    }
}

/* Bytes of scratch that mst_s8_conv1d needs for these sizes. */
long mst_s8_scratch_size(int t, int in_c, int k, int dilation) {
    return (long)(t + (k - 1) * dilation + RB) * round_up(in_c, 4);
}

/* out (T, O) = conv(input, packed weight) + bias (+ residual (T, O), which may be ``out`` itself),
 * "same" padding ``pad``. The input is x (T, C), or with pre_a / pre_b (C,) the snake of a x + b (see
 * load_input). ``scratch`` (mst_s8_scratch_size bytes, or NULL to allocate here) holds the quantized
 * input: reused by the caller, it saves the page faults of a fresh buffer per call. ``range`` (min,
 * max of the input), when given, saves a pass over it: the snake u + sin(u)^2 never decreases, so its
 * extremes follow from each channel's min and max of x (mst_channel_stats). Returns 0, or -1 when the
 * scratch buffer cannot be allocated. */
int mst_s8_conv1d(const float *x, int t, int in_c, const float *pre_a, const float *pre_b, const int8_t *packed,
                  const float *wscale, const int32_t *wsum, const float *bias, const float *residual, int out_c,
                  int k, int dilation, int pad, float *out, int threads, uint8_t *scratch, const float *range) {
    int cp = round_up(in_c, 4);
    int rows = t + (k - 1) * dilation + RB; /* + RB: the last tile may read past the end */
    uint8_t *q = scratch ? scratch : malloc((size_t)rows * cp);
    if (!q) return -1;
    if (threads < 1) threads = 1;
    if (threads > 8) threads = 8;
    if ((long)t * out_c < 4096) threads = 1; /* a thread costs more than such a small product */
    int per = round_up((t + threads - 1) / threads, RB);
    quant_job qj = {x, pre_a, pre_b, t, in_c, cp, 1.0f, 0, NULL, 0.0f, 0.0f};
    quant_part qp[8];
    for (int i = 0; i < threads; ++i) {
        int r0 = i * per < t ? i * per : t, r1 = (i + 1) * per < t ? (i + 1) * per : t;
        qp[i] = (quant_part){&qj, r0, r1, 1, qj};
    }
    float lo = 0.0f, hi = 0.0f;
    if (range) { /* known from the caller (exact for the snake: see mst_s8_conv1d's comment) */
        lo = fminf(lo, range[0]);
        hi = fmaxf(hi, range[1]);
    } else {
        run_parts(quant_rows, qp, sizeof qp[0], threads);
        for (int i = 0; i < threads; ++i) {
            lo = fminf(lo, qp[i].own.lo);
            hi = fmaxf(hi, qp[i].own.hi);
        }
    }
    float scale = (hi - lo) / 255.0f;
    if (!(scale > 0.0f) || !isfinite(scale)) scale = 1.0f;
    int zp = (int)lrintf(-lo / scale);
    zp = zp < 0 ? 0 : (zp > 255 ? 255 : zp);
    memset(q, zp, (size_t)pad * cp);
    memset(q + (size_t)(pad + t) * cp, zp, (size_t)(rows - pad - t) * cp);
    qj.inv_scale = 1.0f / scale;
    qj.zp = zp;
    qj.q = q + (size_t)pad * cp;
    for (int i = 0; i < threads; ++i) qp[i].range = 0;
    run_parts(quant_rows, qp, sizeof qp[0], threads);
    conv_job cj[8];
    for (int i = 0; i < threads; ++i) {
        int r0 = i * per < t ? i * per : t, r1 = (i + 1) * per < t ? (i + 1) * per : t;
        cj[i] = (conv_job){q, packed, wsum, wscale, bias, residual, t, out_c, k, dilation, cp, zp, scale, out, r0, r1};
    }
    run_parts(conv_rows, cj, sizeof cj[0], threads);
    if (!scratch) free(q);
    return 0;
}

typedef struct {
    const float *x;
    int c, r0, r1, lo, hi;
    double *acc; /* 4 x c: sum and squares outside [lo, hi), then inside */
    float *xmin, *xmax;
} stats_part;

static void *stats_rows(void *arg) {
    stats_part *p = arg;
    int c = p->c;
    memset(p->acc, 0, sizeof(double) * 4 * c);
    for (int i = 0; i < c; ++i) {
        p->xmin[i] = INFINITY;
        p->xmax[i] = -INFINITY;
    }
    for (int r = p->r0; r < p->r1; ++r) {
        const float *row = p->x + (size_t)r * c;
        double *s = p->acc + (r >= p->lo && r < p->hi ? 2 * c : 0), *q = s + c;
        for (int i = 0; i < c; ++i) {
            float f = row[i];
            double v = f;
            s[i] += v;
            q[i] += v * v;
            p->xmin[i] = f < p->xmin[i] ? f : p->xmin[i];
            p->xmax[i] = f > p->xmax[i] ? f : p->xmax[i];
        }
    }
    return NULL;
}

/* Per channel of x (T, C): sums and sums of squares over all rows (sum, sq) and over rows [lo, hi)
 * (core_sum, core_sq), in double (the instance norms' statistics), and min and max over all rows
 * (0 when T is 0). Rows split over ``threads``. Returns 0, or -1 without memory for the partial sums. */
int mst_channel_stats(const float *x, int t, int c, int lo, int hi, double *sum, double *sq, double *core_sum,
                      double *core_sq, float *xmin, float *xmax, int threads) {
    if (threads < 1) threads = 1;
    if (threads > 8) threads = 8;
    if ((long)t * c < 65536) threads = 1;
    double *acc = malloc(sizeof(double) * 4 * c * threads);
    float *ext = malloc(sizeof(float) * 2 * c * threads);
    if (!acc || !ext) {
        free(acc);
        free(ext);
        return -1;
    }
    stats_part parts[8];
    int per = (t + threads - 1) / threads;
    for (int i = 0; i < threads; ++i) {
        int r0 = i * per < t ? i * per : t, r1 = (i + 1) * per < t ? (i + 1) * per : t;
        parts[i] = (stats_part){x, c, r0, r1, lo, hi, acc + (size_t)4 * c * i, ext + (size_t)2 * c * i,
                                ext + (size_t)2 * c * i + c};
    }
    run_parts(stats_rows, parts, sizeof parts[0], threads);
    for (int i = 0; i < c; ++i) {
        double so = 0, qo = 0, si = 0, qi = 0;
        float mn = INFINITY, mx = -INFINITY;
        for (int p = 0; p < threads; ++p) {
            const double *a = parts[p].acc;
            so += a[i];
            qo += a[c + i];
            si += a[2 * c + i];
            qi += a[3 * c + i];
            mn = fminf(mn, parts[p].xmin[i]);
            mx = fmaxf(mx, parts[p].xmax[i]);
        }
        sum[i] = so + si;
        sq[i] = qo + qi;
        core_sum[i] = si;
        core_sq[i] = qi;
        xmin[i] = t > 0 ? mn : 0.0f;
        xmax[i] = t > 0 ? mx : 0.0f;
    }
    free(acc);
    free(ext);
    return 0;
}
