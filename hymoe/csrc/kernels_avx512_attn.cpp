// AVX512 decode attention (AttendFn, common.h): attend.h over 16-float vectors, or over 8-float
// ones with AVX512VL's 32 registers (Tuning::attn_ymm). Zen 4 runs a 512-bit instruction as two
// 256-bit halves: there the 8-float kernel, 4 heads a batch, took 0.85-0.92 of the 16-float one's
// time in cache (Qwen3 shape: 32 heads, 4 kv heads of 128, fp16, 256 to 2048 positions, one thread;
// its horizontal sums and broadcasts are half as wide).
#if defined(__x86_64__) || defined(_M_X64)
#include "simd_avx512.h"
#include "attend.h"
#include "kernels.h"
#include "vec256.h"

namespace {

struct Vec512 {
    using T = __m512;
    static const int W = 16, kSlice = 16;  // a head of up to 256 values accumulates in registers
    static const int kHeads = 4;  // grouped path: 4 heads x 4 vectors of accumulators (of 32 registers)
    static T zero() { return _mm512_setzero_ps(); }
    static T load(const float* p) { return _mm512_loadu_ps(p); }
    static T load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
    static T load_bf16(const uint16_t* p) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
    }
    static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
    static T set1(float x) { return _mm512_set1_ps(x); }
    static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
    static T exp(T x) { return exp_ps(x); }
    static float reduce_add(T v) { return _mm512_reduce_add_ps(v); }
    static T max(T a, T b) { return _mm512_max_ps(a, b); }
    static float reduce_max(T v) { return _mm512_reduce_max_ps(v); }
    static void sum4(T a0, T a1, T a2, T a3, float scale, float* out) {
        _mm_storeu_ps(out, _mm_mul_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(scale)));
    }
};

int attend_avx512(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int cache_type,
                  int64_t stride, float scale, float* out, float* m, float* l, float* scratch, int ahead_lines) {
    return (g_tuning.attn_ymm ? attend_vec<Vec256T<4>> : attend_vec<Vec512>)(
        q, N, per_group, d, pieces, count, cache_type, stride, scale, out, m, l, scratch, ahead_lines);
}

}  // namespace

const AttendFn avx512::attend = attend_avx512;
#endif
