/* cblas_sgemm that sends one-row and one-column products to cblas_sgemv.
 *
 * MLX's CPU backend calls only cblas_sgemm. For a product with one row (a decoding step:
 * 1 x K @ K x N) OpenBLAS's sgemm first packs the whole K x N operand, which halves the read speed of a
 * memory-bound step; its sgemv reads the matrix once, in place, and is threaded. Built and loaded by
 * mlx_stream_tts/_blas.py before OpenBLAS, so that MLX's calls bind here; every other call goes on to
 * OpenBLAS's own cblas_sgemm unchanged. No headers: the CBLAS enum values are fixed by the standard.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

static sgemm_fn real_sgemm = 0;
static sgemv_fn real_sgemv = 0;
static volatile long gemv_calls = 0;

void mst_gemv_shim_init(void *sgemm, void *sgemv) {
    real_sgemm = (sgemm_fn)sgemm;
    real_sgemv = (sgemv_fn)sgemv;
}

long mst_gemv_shim_calls(void) { return gemv_calls; }

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
    if (!real_sgemm) /* not initialized: behave as if this library were not there */
        real_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    if (order == ColMajor) {
        /* C^T = B^T A^T in row-major terms: swap the operands and the sizes. */
        order = RowMajor;
        int t = ta; ta = tb; tb = t;
        const float *p = a; a = b; b = p;
        int l = lda; lda = ldb; ldb = l;
        int s = m; m = n; n = s;
    }
    if (real_sgemv && k > 0 && (m == 1 || n == 1) && !(m == 1 && n == 1)) {
        __sync_fetch_and_add(&gemv_calls, 1);
        if (beta == 0.0f) {
            /* The output may be uninitialized memory; some BLAS builds scale y by beta (0 * NaN). */
            int len = m == 1 ? n : m;
            ptrdiff_t step = m == 1 ? 1 : ldc;
            for (int i = 0; i < len; ++i) c[i * step] = 0.0f;
        }
        if (m == 1) {
            /* c[0, j] = alpha * sum_i a[0, i] * op(B)[i, j] + beta * c[0, j] */
            int inca = ta == NoTrans ? 1 : lda;
            if (tb == NoTrans) /* B is K x N: c = B^T a */
                real_sgemv(RowMajor, Trans, k, n, alpha, b, ldb, a, inca, beta, c, 1);
            else /* B is N x K: c = B a */
                real_sgemv(RowMajor, NoTrans, n, k, alpha, b, ldb, a, inca, beta, c, 1);
        } else {
            /* c[i, 0] = alpha * sum_j op(A)[i, j] * op(B)[j, 0] + beta * c[i, 0] */
            int incb = tb == NoTrans ? ldb : 1;
            if (ta == NoTrans) /* A is M x K */
                real_sgemv(RowMajor, NoTrans, m, k, alpha, a, lda, b, incb, beta, c, ldc);
            else /* A is K x M */
                real_sgemv(RowMajor, Trans, k, m, alpha, a, lda, b, incb, beta, c, ldc);
        }
        return;
    }
    real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
