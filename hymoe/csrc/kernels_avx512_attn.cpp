// AVX512 decode attention (KernelTable::attend): scores four positions at a time per query head
// (one reduction of four sums, the keys of the block shared by every head of the group while they
// sit in L1), softmax in vectors, and each head's output accumulated in registers over the values.
#if defined(__x86_64__) || defined(_M_X64)
#include <math.h>

#include "simd_avx512.h"

namespace {

const int kMaxVecs = 16;  // head_dim up to 256 in registers; wider heads take the portable kernel

template <int V>  // V = d / 16 vectors per row
void attend_v(const float* q, int nh, const float* keys, const float* values, int64_t stride, int S, float scale,
              float* out, float* scratch) {
    const int d = 16 * V;
    int s = 0;
    for (; s + 4 <= S; s += 4) {
        const float* k = keys + s * stride;
        for (int h = 0; h < nh; h++) {
            const float* qh = q + (size_t)h * d;
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int v = 0; v < V; v++) {
                const __m512 qv = _mm512_loadu_ps(qh + 16 * v);
                for (int j = 0; j < 4; j++) a[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k + j * stride + 16 * v), a[j]);
            }
            _mm_storeu_ps(scratch + (size_t)h * S + s, _mm_mul_ps(hsum4(a[0], a[1], a[2], a[3]), _mm_set1_ps(scale)));
        }
    }
    for (; s < S; s++)
        for (int h = 0; h < nh; h++) {
            __m512 a = _mm512_setzero_ps();
            for (int v = 0; v < V; v++)
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)h * d + 16 * v), _mm512_loadu_ps(keys + s * stride + 16 * v), a);
            scratch[(size_t)h * S + s] = _mm512_reduce_add_ps(a) * scale;
        }
    for (int h = 0; h < nh; h++) {
        float* p = scratch + (size_t)h * S;
        __m512 m = _mm512_set1_ps(-INFINITY);
        int i = 0;
        for (; i + 16 <= S; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(p + i));
        float best = _mm512_reduce_max_ps(m);
        for (; i < S; i++) best = fmaxf(best, p[i]);
        __m512 sum = _mm512_setzero_ps();
        const __m512 bv = _mm512_set1_ps(best);
        for (i = 0; i + 16 <= S; i += 16) {
            const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p + i), bv));
            _mm512_storeu_ps(p + i, e);
            sum = _mm512_add_ps(sum, e);
        }
        float total = _mm512_reduce_add_ps(sum);
        for (; i < S; i++) total += p[i] = expf(p[i] - best);
        __m512 acc[V];
        for (int v = 0; v < V; v++) acc[v] = _mm512_setzero_ps();
        for (int t = 0; t < S; t++) {
            const __m512 w = _mm512_set1_ps(p[t]);
            const float* val = values + t * stride;
            for (int v = 0; v < V; v++) acc[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(val + 16 * v), acc[v]);
        }
        const __m512 inv = _mm512_set1_ps(1.f / total);
        for (int v = 0; v < V; v++) _mm512_storeu_ps(out + (size_t)h * d + 16 * v, _mm512_mul_ps(acc[v], inv));
    }
}

KernelTable::AttendFn g_portable_attend = nullptr;

void attend_avx512(const float* q, int nh, int d, const float* keys, const float* values, int64_t stride, int S,
                   float scale, float* out, float* scratch) {
    switch (d) {
        case 64: return attend_v<4>(q, nh, keys, values, stride, S, scale, out, scratch);
        case 128: return attend_v<8>(q, nh, keys, values, stride, S, scale, out, scratch);
        case 192: return attend_v<12>(q, nh, keys, values, stride, S, scale, out, scratch);
        case 256: return attend_v<kMaxVecs>(q, nh, keys, values, stride, S, scale, out, scratch);
        default: return g_portable_attend(q, nh, d, keys, values, stride, S, scale, out, scratch);
    }
}

}  // namespace

void fill_avx512_attn(KernelTable* t) {
    g_portable_attend = t->attend;
    t->attend = attend_avx512;
}
#else
#include "common.h"
void fill_avx512_attn(KernelTable*) {}
#endif
