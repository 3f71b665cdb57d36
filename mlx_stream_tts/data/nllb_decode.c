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
 * sinusoidal positions, final layer norm, output head), float32 throughout. The weights are the MLX
 * model's own buffers (no copy). Sums of activations run in 16 fixed lanes, so a result does not
 * depend on where a buffer lies in memory.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

/* Per layer, in this order (nllb_native.py fills them): */
enum {
    LN1_W, LN1_B, QKV_W, QKV_B, O_W, O_B,      /* self-attention; q/k/v as one (3d, d) matrix */
    LN2_W, LN2_B, CQ_W, CQ_B, CO_W, CO_B,      /* cross-attention (its keys/values come per sentence) */
    LN3_W, LN3_B, FC1_W, FC1_B, FC2_W, FC2_B,  /* feed-forward */
    PER_LAYER
};

enum { ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU };

/* Mirrored by ctypes in nllb_native.py: keep the two in step. */
typedef struct {
    int d, heads, ffn, layers, act;
    int n_out, vocab, n_positions, position_offset; /* position row of step t: t + position_offset */
    int max_len, src_len;
    float embed_scale, eps;
    sgemm_fn sgemm;
    const float *const *w;  /* layers * PER_LAYER pointers */
    const float *final_w, *final_b;
    const float *head;      /* (n_out, d) */
    const float *embed;     /* (vocab, d) */
    const float *positions; /* (n_positions, d) */
    const float *cross_k, *cross_v; /* (layers, src_len, d) */
    float *self_k, *self_v;         /* (layers, max_len, d) */
    float *work;   /* 6 * d + ffn + max(max_len, src_len) floats */
    float *logits; /* n_out */
} nllb_decoder;

static float lanes_sum(const float *acc) {
    float s = 0.0f;
    for (int l = 0; l < 16; ++l) s += acc[l];
    return s;
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
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= d; j += 16)
        for (int l = 0; l < 16; ++l) acc[l] += x[j + l];
    for (int l = 0; j < d; ++j, ++l) acc[l] += x[j];
    float mean = lanes_sum(acc) * (1.0f / (float)d);
    for (int j2 = 0; j2 < d; ++j2) out[j2] = x[j2] - mean;
    float var = dot(out, out, d) * (1.0f / (float)d);
    float r = 1.0f / sqrtf(var + eps);
    for (int j2 = 0; j2 < d; ++j2) out[j2] = out[j2] * r * w[j2] + b[j2];
}

/* out = x @ w.T + bias for w (n, k): a one-row product, the bias added by the BLAS call (beta 1). */
static void linear(const nllb_decoder *m, const float *x, const float *w, const float *bias, int n, int k,
                   float *out) {
    if (bias) memcpy(out, bias, sizeof(float) * (size_t)n);
    m->sgemm(RowMajor, NoTrans, Trans, 1, n, k, 1.0f, x, k, w, k, bias ? 1.0f : 0.0f, out, n);
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

/* Feed `token` at target position `pos` (0 for the start token); its keys/values go into the caches
 * at row `pos`. With `want_logits`, the head's scores go to m->logits and the index of the highest is
 * returned; else 0. -1 on bad arguments. */
int mst_nllb_step(const nllb_decoder *m, int token, int pos, int want_logits) {
    int d = m->d;
    if (token < 0 || token >= m->vocab || pos < 0 || pos >= m->max_len ||
        pos + m->position_offset >= m->n_positions || d % m->heads)
        return -1;
    float *x = m->work, *h = x + d, *qkv = h + d, *att = qkv + 3 * d, *f = att + d;
    float *scores = f + (m->ffn > 2 * d ? m->ffn : 2 * d);
    const float *e = m->embed + (size_t)token * d, *p = m->positions + (size_t)(pos + m->position_offset) * d;
    for (int j = 0; j < d; ++j) x[j] = e[j] * m->embed_scale + p[j];

    for (int l = 0; l < m->layers; ++l) {
        const float *const *w = m->w + (size_t)l * PER_LAYER;
        float *keys = m->self_k + (size_t)l * m->max_len * d, *values = m->self_v + (size_t)l * m->max_len * d;

        layer_norm(x, w[LN1_W], w[LN1_B], m->eps, d, h);
        linear(m, h, w[QKV_W], w[QKV_B], 3 * d, d, qkv);
        memcpy(keys + (size_t)pos * d, qkv + d, sizeof(float) * (size_t)d);
        memcpy(values + (size_t)pos * d, qkv + 2 * d, sizeof(float) * (size_t)d);
        attend(qkv, keys, values, pos + 1, d, m->heads, scores, att);
        linear(m, att, w[O_W], w[O_B], d, d, h);
        for (int j = 0; j < d; ++j) x[j] += h[j];

        layer_norm(x, w[LN2_W], w[LN2_B], m->eps, d, h);
        linear(m, h, w[CQ_W], w[CQ_B], d, d, qkv);
        attend(qkv, m->cross_k + (size_t)l * m->src_len * d, m->cross_v + (size_t)l * m->src_len * d,
               m->src_len, d, m->heads, scores, att);
        linear(m, att, w[CO_W], w[CO_B], d, d, h);
        for (int j = 0; j < d; ++j) x[j] += h[j];

        layer_norm(x, w[LN3_W], w[LN3_B], m->eps, d, h);
        linear(m, h, w[FC1_W], w[FC1_B], m->ffn, d, f);
        for (int j = 0; j < m->ffn; ++j) f[j] = activation(m->act, f[j]);
        linear(m, f, w[FC2_W], w[FC2_B], d, m->ffn, h);
        for (int j = 0; j < d; ++j) x[j] += h[j];
    }
    if (!want_logits) return 0;
    layer_norm(x, m->final_w, m->final_b, m->eps, d, h);
    linear(m, h, m->head, NULL, m->n_out, d, m->logits);
    int best = 0;
    for (int i = 1; i < m->n_out; ++i)
        if (m->logits[i] > m->logits[best]) best = i;
    return best;
}

/* Floats of work space that mst_nllb_step needs. */
long mst_nllb_work_size(int d, int ffn, int max_len, int src_len) {
    long rows = max_len > src_len ? max_len : src_len;
    return 6L * d + (ffn > 2 * d ? ffn : 2 * d) + rows;
}
