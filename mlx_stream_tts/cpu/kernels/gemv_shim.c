/* cblas_sgemm that sends one-row and one-column products to a matrix-vector kernel.
 *
 * MLX's CPU backend calls only cblas_sgemm. For a product with one row (a decoding step:
 * 1 x K @ K x N) OpenBLAS's sgemm first packs the whole K x N operand, which halves the read speed of a
 * memory-bound step; a matrix-vector product reads the matrix once, in place. Built and loaded by
 * mlx_stream_tts/_blas.py before OpenBLAS, so that MLX's calls bind here; every other call goes on to
 * OpenBLAS's own cblas_sgemm unchanged. No headers: the CBLAS enum values are fixed by the standard.
 *
 * The decoding case, rows of dot products (MLX's x @ W.T: each output is a contiguous weight row times
 * the input), runs on our own AVX-512 kernel where the CPU has it, over our own worker threads; the
 * rest, and CPUs without AVX-512, use OpenBLAS's cblas_sgemv. Measured on the project's 2-core VM:
 * one thread reads ~42 GB/s (OpenBLAS's sgemv ~34), two about as fast as OpenBLAS's two; but when
 * another process keeps a core busy, OpenBLAS's threaded sgemv collapses (its threads wait on each
 * other: decoding steps of 30 ms took 170 ms at the median), while here the calling thread takes
 * whatever share of the rows the worker cannot (33 ms at the median).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

static sgemm_fn real_sgemm = 0;
static sgemv_fn real_sgemv = 0;
static volatile long gemv_calls = 0;
static volatile long own_calls = 0; /* of those, how many ran on our own kernel */

/* ----------------------------------------------------------------------------- the row kernel */

/* y[i * incy] = alpha * dot(a[i * lda, 0:k], x[0:k]) (+ beta * y[i * incy]) for rows [r0, r1). */
typedef void (*rows_fn)(int r0, int r1, int k, float alpha, const float *a, long lda, const float *x,
                        float beta, float *y, long incy);

static void rows_plain(int r0, int r1, int k, float alpha, const float *a, long lda, const float *x,
                       float beta, float *y, long incy) {
    for (int i = r0; i < r1; ++i) {
        const float *row = a + (long)i * lda;
        float s = 0.0f;
        for (int j = 0; j < k; ++j) s += row[j] * x[j];
        y[i * incy] = alpha * s + (beta == 0.0f ? 0.0f : beta * y[i * incy]);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX512_KERNEL 1

/* Eight (or four) rows at a time, the input vector (<= 16 KB here) loaded once per group from L1. Rows are
 * read with aligned 64-byte loads (MLX's buffers are not 64-byte aligned, and loads that straddle two
 * cache lines cut one core's read speed from ~40 to ~24 GB/s); the input vector takes the unaligned
 * loads instead, from L1. One core reads ~42 GB/s with it, as fast as a plain sum over the same
 * memory; software prefetching made it slower.
 *
 * Every row is summed in one order whatever its alignment: lane c of one accumulator takes elements
 * c, c + 16, c + 32, ... in turn, and the lanes are added in a fixed order at the end (the aligned
 * loads only move which register lane holds class c: one rotation per row undoes it). MLX places
 * activations (attention caches, conv inputs) at varying addresses; sums that depended on alignment
 * made outputs differ in the last bit from run to run. */
__attribute__((target("avx512f,fma"))) static inline float finish(__m512 acc, int shift, float alpha, float beta,
                                                                   const float *y) {
    /* lane c of the canonical order is register lane (c + shift) % 16 */
    __m512i idx = _mm512_and_si512(
        _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(shift)),
        _mm512_set1_epi32(15));
    float s = _mm512_reduce_add_ps(_mm512_permutexvar_ps(idx, acc));
    return alpha * s + (beta == 0.0f ? 0.0f : beta * *y);
}

static inline unsigned short low_mask(int n) { return (unsigned short)((1u << n) - 1u); }

/* Lanes of a vector of 16 elements starting at element `start` that lie in [0, k). */
static inline unsigned short valid_lanes(long start, int k) {
    long lo = start < 0 ? -start : 0, hi = k - start > 16 ? 16 : k - start;
    if (hi <= lo) return 0;
    return (unsigned short)(low_mask((int)hi) & ~low_mask((int)lo));
}

/* R rows (sharing one alignment) from `p0`: aligned loads, one accumulator per row; the R independent
 * sums keep the FMA units busy. */
#define ROWS_ALIGNED(R)                                                                                    \
    do {                                                                                                   \
        const float *p0 = a + (long)i * lda;                                                               \
        int shift = (int)(((uintptr_t)p0 / 4) % 16); /* p0 - shift is 64-byte aligned */                   \
        const float *b = p0 - shift, *xs = x - shift;                                                      \
        __m512 acc[R];                                                                                     \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();                 \
        int vectors = (k + shift + 15) / 16, v = 0;                                                        \
        for (; v < vectors; ++v) { /* the masked head (and everything when k is small) */                  \
            long e0 = 16L * v - shift;                                                                     \
            if (e0 >= 0 && e0 + 16 <= k) break;                                                            \
            __mmask16 m = valid_lanes(e0, k);                                                              \
            __m512 xv = _mm512_maskz_loadu_ps(m, xs + 16L * v);                                            \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                           \
                acc[r] = _mm512_fmadd_ps(_mm512_maskz_load_ps(m, b + r * lda + 16L * v), xv, acc[r]);      \
        }                                                                                                  \
        int full = (int)((k + shift) / 16); /* vectors before this one are whole */                       \
        for (; v + 2 <= full; v += 2) { /* two per turn: fewer loop instructions per load */               \
            __m512 x0 = _mm512_loadu_ps(xs + 16L * v), x1 = _mm512_loadu_ps(xs + 16L * v + 16);            \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {                                          \
                acc[r] = _mm512_fmadd_ps(_mm512_load_ps(b + r * lda + 16L * v), x0, acc[r]);               \
                acc[r] = _mm512_fmadd_ps(_mm512_load_ps(b + r * lda + 16L * v + 16), x1, acc[r]);          \
            }                                                                                              \
        }                                                                                                  \
        for (; v < full; ++v) {                                                                            \
            __m512 xv = _mm512_loadu_ps(xs + 16L * v);                                                     \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                           \
                acc[r] = _mm512_fmadd_ps(_mm512_load_ps(b + r * lda + 16L * v), xv, acc[r]);               \
        }                                                                                                  \
        for (; v < vectors; ++v) { /* the masked tail */                                                   \
            __mmask16 m = valid_lanes(16L * v - shift, k);                                                 \
            __m512 xv = _mm512_maskz_loadu_ps(m, xs + 16L * v);                                            \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                           \
                acc[r] = _mm512_fmadd_ps(_mm512_maskz_load_ps(m, b + r * lda + 16L * v), xv, acc[r]);      \
        }                                                                                                  \
        for (int r = 0; r < R; ++r) {                                                                      \
            float *out = y + (i + r) * incy;                                                               \
            *out = finish(acc[r], shift, alpha, beta, out);                                                \
        }                                                                                                  \
    } while (0)

__attribute__((target("avx512f,fma"))) static void rows_avx512(int r0, int r1, int k, float alpha,
                                                             const float *a, long lda, const float *x,
                                                             float beta, float *y, long incy) {
    int i = r0;
    if (lda % 16 == 0) { /* rows share one alignment */
        for (; i + 8 <= r1; i += 8) ROWS_ALIGNED(8);
        for (; i + 4 <= r1; i += 4) ROWS_ALIGNED(4);
    }
    for (; i < r1; ++i) { /* other rows one at a time, unaligned, in the same order */
        const float *p = a + (long)i * lda;
        __m512 c = _mm512_setzero_ps();
        int j = 0;
        for (; j + 16 <= k; j += 16) c = _mm512_fmadd_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(x + j), c);
        if (j < k) {
            __mmask16 m = low_mask(k - j);
            c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + j), _mm512_maskz_loadu_ps(m, x + j), c);
        }
        y[i * incy] = finish(c, 0, alpha, beta, y + i * incy);
    }
}
#undef ROWS_ALIGNED

/* For large matrices (weights, whose address does not move): four rows at a time, two accumulators
 * each: eight independent sums, and the input vector (<= 16 KB
 * here) is loaded once per four rows from L1. Rows are read with aligned 64-byte loads after a masked
 * head (MLX's buffers are not 64-byte aligned, and loads that straddle two cache lines cut one core's
 * read speed from ~40 to ~24 GB/s); the input vector takes the unaligned loads instead, from L1. One
 * core reads ~42 GB/s with it, as fast as a plain sum over the same memory; software prefetching
 * made it slower. */
__attribute__((target("avx512f,fma"))) static inline float finish_fast(__m512 acc0, __m512 acc1, float alpha,
                                                                   float beta, const float *y) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    return alpha * s + (beta == 0.0f ? 0.0f : beta * *y);
}


__attribute__((target("avx512f,fma"))) static void rows_avx512_fast(int r0, int r1, int k, float alpha,
                                                             const float *a, long lda, const float *x,
                                                             float beta, float *y, long incy) {
    /* Head: elements before the first 64-byte boundary of row r0, the same for every row when the
     * leading dimension is a multiple of 16 floats (else all loads stay unaligned: head 0). */
    uintptr_t addr = (uintptr_t)(a + (long)r0 * lda);
    int head = 0;
    if (lda % 16 == 0 && addr % 4 == 0) head = (int)((16 - (addr / 4) % 16) % 16);
    if (head > k) head = k;
    int body = head + ((k - head) & ~31), body16 = head + ((k - head) & ~15);
    __mmask16 hm = low_mask(head), tm = low_mask(k - body16);
#define FMA4(J, LOAD_A, LOAD_X, A0, A1, A2, A3)                                                              \
    do {                                                                                                     \
        __m512 v = LOAD_X(x + (J));                                                                          \
        A0 = _mm512_fmadd_ps(LOAD_A(p0 + (J)), v, A0);                                                       \
        A1 = _mm512_fmadd_ps(LOAD_A(p1 + (J)), v, A1);                                                       \
        A2 = _mm512_fmadd_ps(LOAD_A(p2 + (J)), v, A2);                                                       \
        A3 = _mm512_fmadd_ps(LOAD_A(p3 + (J)), v, A3);                                                       \
    } while (0)
#define LOAD_HEAD(p) _mm512_maskz_loadu_ps(hm, p)
#define LOAD_TAIL(p) _mm512_maskz_loadu_ps(tm, p)
#define LOAD_ROW(p) (head || (addr % 64 == 0 && lda % 16 == 0) ? _mm512_load_ps(p) : _mm512_loadu_ps(p))
    int i = r0;
    for (; i + 4 <= r1; i += 4) {
        const float *p0 = a + (long)i * lda, *p1 = p0 + lda, *p2 = p1 + lda, *p3 = p2 + lda;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        if (head) FMA4(0, LOAD_HEAD, LOAD_HEAD, b0, b1, b2, b3);
        int j = head;
        for (; j < body; j += 32) {
            FMA4(j, LOAD_ROW, _mm512_loadu_ps, a0, a1, a2, a3);
            FMA4(j + 16, LOAD_ROW, _mm512_loadu_ps, b0, b1, b2, b3);
        }
        if (j < body16) {
            FMA4(j, LOAD_ROW, _mm512_loadu_ps, a0, a1, a2, a3);
            j += 16;
        }
        if (j < k) FMA4(j, LOAD_TAIL, LOAD_TAIL, b0, b1, b2, b3);
        float *q = y + i * incy;
        q[0] = finish_fast(a0, b0, alpha, beta, q);
        q[incy] = finish_fast(a1, b1, alpha, beta, q + incy);
        q[2 * incy] = finish_fast(a2, b2, alpha, beta, q + 2 * incy);
        q[3 * incy] = finish_fast(a3, b3, alpha, beta, q + 3 * incy);
    }
    for (; i < r1; ++i) { /* the last rows, one at a time, all loads unaligned */
        const float *p = a + (long)i * lda;
        __m512 c = _mm512_setzero_ps(), d = c;
        int j = 0;
        for (; j + 32 <= k; j += 32) {
            c = _mm512_fmadd_ps(_mm512_loadu_ps(p + j), _mm512_loadu_ps(x + j), c);
            d = _mm512_fmadd_ps(_mm512_loadu_ps(p + j + 16), _mm512_loadu_ps(x + j + 16), d);
        }
        for (; j < k; j += 16) {
            __mmask16 m = low_mask(k - j < 16 ? k - j : 16);
            c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + j), _mm512_maskz_loadu_ps(m, x + j), c);
        }
        y[i * incy] = finish_fast(c, d, alpha, beta, y + i * incy);
    }
#undef FMA4
#undef LOAD_HEAD
#undef LOAD_TAIL
#undef LOAD_ROW
}
#endif

static rows_fn kernel = 0;
#define FAST_KERNEL_MIN_FLOATS (1L << 18) /* 1 MB */ /* set by init: 0 keeps every product on OpenBLAS */

/* ------------------------------------------------------------------------------- the workers */

/* The calling thread and (threads - 1) workers share a product's rows in chunks: the caller takes
 * chunks from the front, workers from the back, so each reads one contiguous stretch, and a worker
 * that wakes late, or sits on a core that another thread holds, only leaves more chunks to the caller
 * instead of making it wait. Between products an idle worker polls (the next product of a decoding
 * step follows within microseconds; waking a sleeping thread costs tens of microseconds in a VM), first
 * with pause, then with sched_yield so that any other ready thread (MLX's, Python's) gets its core at
 * once, and sleeps on a futex when no product has come for a while. */
#define MAX_THREADS 16

/* Any other row-parallel work (mst_gemv_shim_parallel): rows [r0, r1) of a job described by ctx. */
typedef void (*task_fn)(const void *ctx, int r0, int r1);

static struct {
    rows_fn kern;
    task_fn task; /* when set, chunks run task(ctx, r0, r1) instead of kern */
    const void *ctx;
    int k, rows, chunk, chunks; /* chunk: rows per chunk */
    float alpha, beta;
    const float *a, *x;
    float *y;
    long lda, incy;
} job; /* written by the caller only while no chunk of a job is out */

/* The chunks left: (job & 0xffff) << 48 | front << 24 | back; a chunk is taken by one CAS. */
static _Atomic unsigned long long chunk_range __attribute__((aligned(64)));
#define RANGE(gen, front, back) \
    (((unsigned long long)((gen) & 0xffffu) << 48) | ((unsigned long long)(front) << 24) | (back))
static _Atomic int done_chunks __attribute__((aligned(64)));
static _Atomic unsigned int job_gen __attribute__((aligned(64))); /* futex word: bumped once per job */
static _Atomic int sleepers;

static int pool_threads = 1;                /* wanted: caller + workers */
static int pool_started = 0;                /* workers running */
static long pause_ns = 20000;               /* _blas.GEMV_POOL_DEFAULTS sets these at load */
static long spin_ns = 2000000;
static long min_parallel_bytes = 256 * 1024;
static long chunk_bytes = 64 * 1024;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Take and run chunks of job `gen` from the front or the back until none is left. Any chunk taken
 * belongs to the current job (the job cannot change while one of its chunks is out), so the job is
 * read after the take. */
static void run_chunks(unsigned int gen, int from_back) {
    for (;;) {
        unsigned long long cur = __atomic_load_n(&chunk_range, __ATOMIC_ACQUIRE), want;
        int c;
        for (;;) {
            unsigned int front = (unsigned int)(cur >> 24) & 0xffffffu, back = (unsigned int)cur & 0xffffffu;
            if ((unsigned int)(cur >> 48) != (gen & 0xffffu) || front >= back) return;
            c = from_back ? (int)back - 1 : (int)front;
            want = from_back ? cur - 1 : cur + (1ull << 24);
            if (__atomic_compare_exchange_n(&chunk_range, &cur, want, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                break;
        }
        int r0 = c * job.chunk, r1 = r0 + job.chunk < job.rows ? r0 + job.chunk : job.rows;
        if (job.task) job.task(job.ctx, r0, r1);
        else job.kern(r0, r1, job.k, job.alpha, job.a, job.lda, job.x, job.beta, job.y, job.incy);
        __atomic_add_fetch(&done_chunks, 1, __ATOMIC_RELEASE);
    }
}

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg; /* 1, 2, ...: workers beyond the wanted count stay out */
    pthread_setname_np(pthread_self(), "mst-gemv");
    unsigned int seen = __atomic_load_n(&job_gen, __ATOMIC_ACQUIRE);
    for (;;) {
        unsigned int gen;
        long start = now_ns();
        int polls = 0;
        while ((gen = __atomic_load_n(&job_gen, __ATOMIC_ACQUIRE)) == seen) {
            cpu_relax();
            if (++polls % 64) continue;
            long idle = now_ns() - start;
            if (idle > spin_ns) {
                /* Seen by the caller's check of `sleepers` after its bump of job_gen, or the futex
                 * call returns at once because job_gen already moved. */
                __atomic_add_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
                if (__atomic_load_n(&job_gen, __ATOMIC_SEQ_CST) == seen)
                    syscall(SYS_futex, &job_gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                __atomic_sub_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
                start = now_ns();
            } else if (idle > pause_ns) {
                sched_yield();
            }
        }
        seen = gen;
        if (index < pool_threads) run_chunks(gen, 1);
    }
    return NULL;
}

static void forget_workers(void) { /* a forked child has none of them, and a free pool */
    pool_started = 0;
    pthread_mutex_init(&pool_lock, NULL);
}
static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_workers); }

static void start_workers(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    while (pool_started < pool_threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&t, &attr, worker, (void *)(intptr_t)(pool_started + 1));
        pthread_attr_destroy(&attr);
        if (err) { /* go on with the threads we have */
            pool_threads = pool_started + 1;
            return;
        }
        ++pool_started;
    }
}

/* Until the workers' last chunks are done: pause, then yield (a worker may share this core). */
static void wait_done(void) {
    int polls = 0;
    while (__atomic_load_n(&done_chunks, __ATOMIC_ACQUIRE) < job.chunks) {
        cpu_relax();
        if (++polls > 4096) sched_yield();
    }
}

/* Time (ns) and bytes of the products run by rows_parallel and mst_gemv_shim_parallel: their
 * in-process read speed. */
static volatile long stat_ns = 0, stat_bytes = 0;

/* Run the job already written to `job` (kern or task, rows, chunk) on the pool; pool_lock is held. */
static void run_job(void) {
    job.chunks = (job.rows + job.chunk - 1) / job.chunk;
    __atomic_store_n(&done_chunks, 0, __ATOMIC_RELAXED);
    unsigned int gen = __atomic_load_n(&job_gen, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&chunk_range, RANGE(gen, 0, job.chunks), __ATOMIC_RELEASE);
    __atomic_store_n(&job_gen, gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST) > 0)
        syscall(SYS_futex, &job_gen, FUTEX_WAKE_PRIVATE, MAX_THREADS, NULL, NULL, 0);
    run_chunks(gen, 0);
    wait_done();
}

/* Whether the pool can take a job of `bytes` now; on 1 the caller holds pool_lock. */
static int take_pool(long bytes) {
    if (pool_threads < 2 || bytes < min_parallel_bytes || pthread_mutex_trylock(&pool_lock) != 0) return 0;
    start_workers();
    if (pool_started == 0) {
        pthread_mutex_unlock(&pool_lock);
        return 0;
    }
    return 1;
}

/* Rows per chunk for rows of `row_bytes`: about chunk_bytes, whole blocks of four rows. */
static int chunk_rows(long row_bytes) {
    int chunk = (int)(chunk_bytes / (row_bytes > 0 ? row_bytes : 1));
    return chunk < 4 ? 4 : (chunk + 3) & ~3;
}

static void rows_parallel_timed(rows_fn kern, int rows, int k, float alpha, const float *a, long lda,
                                const float *x, float beta, float *y, long incy) {
    if (!take_pool((long)rows * k * 4)) { /* small, single-threaded, or another thread has the pool */
        kern(0, rows, k, alpha, a, lda, x, beta, y, incy);
        return;
    }
    job.task = 0; job.kern = kern; job.k = k; job.rows = rows; job.alpha = alpha; job.beta = beta;
    job.a = a; job.x = x; job.y = y; job.lda = lda; job.incy = incy;
    job.chunk = chunk_rows((long)k * 4);
    run_job();
    pthread_mutex_unlock(&pool_lock);
}

static void rows_parallel(rows_fn kern, int rows, int k, float alpha, const float *a, long lda,
                          const float *x, float beta, float *y, long incy) {
    long start = now_ns();
    rows_parallel_timed(kern, rows, k, alpha, a, lda, x, beta, y, incy);
    __sync_fetch_and_add(&stat_ns, now_ns() - start);
    __sync_fetch_and_add(&stat_bytes, (long)rows * k * 4);
}

/* Rows [0, rows) of any row-parallel job that reads `bytes` in all, on the same threads as the
 * products (the native decoding step's 8- and 4-bit products use it); timed like them. */
void mst_gemv_shim_parallel(task_fn task, const void *ctx, int rows, long bytes) {
    long start = now_ns();
    if (rows > 0 && take_pool(bytes)) {
        job.task = task; job.ctx = ctx; job.rows = rows;
        job.chunk = chunk_rows(bytes / rows);
        run_job();
        pthread_mutex_unlock(&pool_lock);
    } else if (rows > 0) {
        task(ctx, 0, rows);
    }
    __sync_fetch_and_add(&stat_ns, now_ns() - start);
    __sync_fetch_and_add(&stat_bytes, bytes);
}

/* ---------------------------------------------------------------------------------- interface */

/* sgemm and sgemv: OpenBLAS's own functions. Our kernel is used where the CPU has AVX-512. */
void mst_gemv_shim_init(void *sgemm, void *sgemv) {
    real_sgemm = (sgemm_fn)sgemm;
    real_sgemv = (sgemv_fn)sgemv;
#ifdef HAVE_AVX512_KERNEL
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) kernel = rows_avx512;
#endif
}

long mst_gemv_shim_calls(void) { return gemv_calls; }
long mst_gemv_shim_own_calls(void) { return own_calls; }
long mst_gemv_shim_kernel_ns(void) { return stat_ns; }
long mst_gemv_shim_kernel_bytes(void) { return stat_bytes; }

/* Which kernel runs the row products: 0 OpenBLAS's sgemv, 1 plain C (tests), 2 AVX-512 if supported.
 * Returns the kernel now in use. */
int mst_gemv_shim_set_kernel(int which) {
    pthread_mutex_lock(&pool_lock);
    if (which == 0) kernel = 0;
    else if (which == 1) kernel = rows_plain;
#ifdef HAVE_AVX512_KERNEL
    else if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) kernel = rows_avx512;
#endif
    int now = kernel == 0 ? 0 : kernel == rows_plain ? 1 : 2;
    pthread_mutex_unlock(&pool_lock);
    return now;
}

/* Threads for our kernel (the caller counts as one); how long an idle worker polls with pause, then
 * with sched_yield (giving its core to any other ready thread), before it sleeps; the smallest product
 * worth splitting; the chunk size. Arguments < 0 leave a value unchanged. */
void mst_gemv_shim_configure(int threads, long pause, long spin, long min_bytes, long chunk) {
    pthread_mutex_lock(&pool_lock);
    if (threads > 0) pool_threads = threads > MAX_THREADS ? MAX_THREADS : threads;
    if (pause >= 0) pause_ns = pause;
    if (spin >= 0) spin_ns = spin;
    if (min_bytes >= 0) min_parallel_bytes = min_bytes;
    if (chunk > 0) chunk_bytes = chunk;
    pthread_mutex_unlock(&pool_lock);
}

int mst_gemv_shim_threads(void) { return pool_threads; }

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
        /* As rows of dot products: mat (rows x k, leading dim ld) times vec (stride inc) into out. */
        const float *mat, *vec;
        int rows, ld, inc, dots;
        long incy;
        if (m == 1) {
            rows = n; mat = b; ld = ldb; vec = a; inc = ta == NoTrans ? 1 : lda; incy = 1;
            dots = tb == Trans; /* B is N x K: c = B a */
        } else {
            rows = m; mat = a; ld = lda; vec = b; inc = tb == NoTrans ? ldb : 1; incy = ldc;
            dots = ta == NoTrans; /* A is M x K */
        }
        rows_fn kern = kernel;
#ifdef HAVE_AVX512_KERNEL
        /* Large matrices are weights, whose address (so alignment) is fixed: the fastest kernel. Smaller
         * ones may be activations at varying addresses: the kernel whose sums do not depend on it. */
        if (kern == rows_avx512 && (long)rows * k >= FAST_KERNEL_MIN_FLOATS) kern = rows_avx512_fast;
#endif
        if (kern && dots && inc == 1) {
            __sync_fetch_and_add(&own_calls, 1);
            if (kern == rows_plain) kern(0, rows, k, alpha, mat, ld, vec, beta, c, incy);
            else rows_parallel(kern, rows, k, alpha, mat, ld, vec, beta, c, incy);
            return;
        }
        if (beta == 0.0f) {
            /* The output may be uninitialized memory; some BLAS builds scale y by beta (0 * NaN). */
            for (int i = 0; i < rows; ++i) c[i * incy] = 0.0f;
        }
        if (dots)
            real_sgemv(RowMajor, NoTrans, rows, k, alpha, mat, ld, vec, inc, beta, c, (int)incy);
        else /* mat is K x rows: c = mat^T vec */
            real_sgemv(RowMajor, Trans, k, rows, alpha, mat, ld, vec, inc, beta, c, (int)incy);
        return;
    }
    real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
